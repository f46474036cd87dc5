"""``python -m runtime COMMAND ...``: the runtime's command-line tools.

Commands: ``segment`` (few-shot segmentation of image files), ``dense``
(SAM2-UNet / SAM2-UNeXT on image files), ``camera`` (live camera / stream /
video loop, few-shot or SAM2 tracking). ``python -m runtime COMMAND --help``
explains each.
"""

from __future__ import annotations

import sys
from typing import List, Optional

COMMANDS = {
    "segment": ("runtime.cli.segment", "few-shot segmentation of image files"),
    "dense": ("runtime.cli.dense", "SAM2-UNet / SAM2-UNeXT dense segmentation of image files"),
    "camera": ("runtime.cli.camera", "camera / stream / video loop: few-shot or SAM2 tracking"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [__doc__.strip(), "", "commands:"] + [f"  {c:<8} {h}" for c, (_, h) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
