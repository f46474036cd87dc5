"""The project's error types: one base, one exit code per kind of fault.

Every error the project raises on purpose derives from :class:`Sam2EdgeError`
and carries the exit status a command-line tool ends with when it is not
caught (:mod:`runtime.cli.common` maps them; tracebacks only with
``--debug``). Messages name the file, flag or input at fault and the fix.

======================  ====  ===============================================
type                    exit  meaning
======================  ====  ===============================================
``UsageError``          2     bad input, flag or file (the user can fix it)
``InputError``          2     an image, mask, prompt or tensor the API refuses
``ProfileLimitError``   2     more memories/points/frames than the engines take
``ModelFolderError``    2     a model folder is missing, incomplete or changed
``EngineIncompatible``  2     an engine built for another TensorRT or GPU
``BackendUnavailable``  2     the backend asked for is not installed/usable here
``SourceError``         3     a camera/stream/video source failed (camera CLI)
``Sam2EdgeError``       1     a failure while running
======================  ====  ===============================================

Exit statuses of every CLI: 0 done, 1 failure while running, 2 bad input or
usage, 3 source lost (camera), 130 interrupted (SIGINT), 143 terminated
(SIGTERM). The ``UsageError`` family also subclasses ``ValueError``, so
callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SOURCE = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Sam2EdgeError(Exception):
    """Base of every error this project raises on purpose; ``exit_code`` for the CLIs."""

    exit_code = EXIT_FAILURE


class UsageError(Sam2EdgeError, ValueError):
    """Bad input, flag or file: the message says what to change."""

    exit_code = EXIT_USAGE


class InputError(UsageError):
    """An image, mask, prompt or tensor the segmenter cannot use; the message says why."""


class ProfileLimitError(InputError):
    """An input exceeds what the engines' optimisation profiles admit; the message names the
    limit and the ``export.build`` setting that raises it."""


class ModelFolderError(UsageError):
    """A model folder is missing, incomplete, of another kind, or does not match its manifest."""


class EngineIncompatible(ModelFolderError):
    """A serialized engine was built with another TensorRT version or for another GPU."""


class BackendUnavailable(UsageError):
    """A backend's Python package, driver or device is missing on this machine."""


class SourceError(Sam2EdgeError):
    """A camera, stream, video or image-folder source cannot be opened or was lost."""

    exit_code = EXIT_SOURCE
