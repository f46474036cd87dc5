"""Dense products: SAM2-UNet / SAM2-UNeXT segmentation and SAM2 encoder features."""
