"""SAM2 products: few-shot segmentation (SANSA), the image predictor and the video tracker."""
