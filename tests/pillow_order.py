"""The Pillow whose pass order ``runtime.core.resize.pil_vertical_first`` follows.

The rule was fitted on the Pillow 13.0.0 wheel (no Pillow source read holds
it), so tests compare a two-pass resize with the installed Pillow only where
that Pillow is 13.0.x; elsewhere they compare each pass alone.
"""

import PIL

FITTED = PIL.__version__.startswith("13.0.")
WHY_NOT = (f"runtime.core.resize follows the pass order of Pillow 13.0.x; this is Pillow {PIL.__version__}, "
           "which may order the passes of tall frames otherwise")
