"""What every command-line tool of the project shares: help format, error -> exit status, signals.

:func:`run_main` runs a CLI's body and maps what escapes it to one line on
stderr and the exit statuses of :mod:`runtime.errors` (0 done, 1 failure
while running, 2 bad input or usage, 3 source lost, 130 SIGINT, 143
SIGTERM); a traceback is printed only with ``--debug``. SIGTERM is turned
into the same clean unwinding as Ctrl-C (``finally`` blocks run: outputs are
finalised, sessions closed).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from typing import Callable, Optional

from runtime.errors import EXIT_FAILURE, EXIT_SIGINT, EXIT_SIGTERM, Sam2EdgeError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags and options whose default is "not given" (None/False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback (normally one line)")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def add_objects_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--objects-per-call`` and ``--pad-objects``: how ``what`` (concepts / objects) share calls."""
    parser.add_argument("--objects-per-call", type=int, default=None, metavar="N",
                        help=f"{what} per memory-attention and decoder call, 1 .. the folder's --max-objects "
                             "(default: that maximum on TensorRT and GPU providers, 1 on ONNX Runtime's CPU "
                             "provider, where batched calls measured slower)")
    parser.add_argument("--pad-objects", action="store_true",
                        help=f"also join {what} with different memory counts in one call (padded; same masks)")


def add_edge_options(parser: argparse.ArgumentParser, postprocess: bool = True) -> None:
    """``--preprocess`` (and ``--postprocess``): where the folder's edge graphs run."""
    from runtime.core.backends import EDGE_MODES, POSTPROCESS_HELP, PREPROCESS_HELP

    parser.add_argument("--preprocess", choices=EDGE_MODES, default="auto", help=PREPROCESS_HELP)
    if postprocess:
        parser.add_argument("--postprocess", choices=EDGE_MODES, default="auto", help=POSTPROCESS_HELP)


def _on_sigterm(signum, frame):
    raise Terminated()


def error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def run_main(body: Callable[[], Optional[int]], debug: bool = False) -> int:
    """Run ``body`` (returns an exit status, None = 0); map errors and signals to exit statuses."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave the handler alone
        previous = None
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        error("interrupted (SIGINT)")
        return EXIT_SIGINT
    except Terminated:
        error("terminated (SIGTERM)")
        return EXIT_SIGTERM
    except Sam2EdgeError as e:
        if debug:
            traceback.print_exc()
        error(str(e))
        return e.exit_code
    except Exception as e:  # a bug or an unexpected library failure: still one line
        if debug:
            traceback.print_exc()
        error(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
        return EXIT_FAILURE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
