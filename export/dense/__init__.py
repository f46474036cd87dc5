"""SAM2-based dense models and encoder-feature engines on the project's toolchain.

- :mod:`export.dense.sam2_unet`: SAM2-UNet (arXiv 2408.08870).
- :mod:`export.dense.sam2_unext`: SAM2-UNeXT (arXiv 2508.03566) with
  :mod:`export.dense.dinov2` (DINOv2 ViT in timm's module and key layout).
- :mod:`export.dense.features`: the SAM2 trunk (and optionally FPN neck) as a
  feature engine.
- :mod:`export.dense.models`: configurations, construction, random weights and
  checkpoint loading in the authors' key layouts.
- :mod:`export.dense.build`: ``python -m export.build --model sam2-unet|sam2-unext|features``.

The tensors every exported part takes and returns are described once, in
:mod:`runtime.dense.spec` (read by the runtime too).
"""
