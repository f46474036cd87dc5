"""Real third-party packages of several versions, fetched from PyPI for the conformance tests.

- :func:`tensorrt_bindings`: the real TensorRT Python bindings of a version
  (PyPI's ``tensorrt-cu12-bindings`` wheels, ~1.3 MB, the very ``tensorrt.so``
  users get). The libraries they load (``libnvinfer.so``, ...) are not on
  PyPI and need a GPU, so this builds stub libraries with the same sonames
  exporting the handful of C entry points the bindings call (each returns
  NULL). Importing then gives the real classes, enums, methods, properties
  and signatures of that version; nothing backed by the library can be
  created (Builder, Runtime, ...: see ``tests/trt_api/standins.py``).
- :func:`pip_target`: any requirement installed into its own folder (e.g.
  ``cuda-python==12.2.1``), for code that must work with several versions.

Everything goes to ``.cache/real-packages`` under the repository (ignored by
git; ``SAM2EDGE_PACKAGE_CACHE`` overrides it), fetched on first use: the
wheels are small and PyPI keeps every version, so nothing is vendored. Without
PyPI, gcc, readelf or nm the callers skip with the reason (:func:`not_here`),
except in CI, where ``.ci/run`` makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SAM2EDGE_PACKAGE_CACHE", ROOT / ".cache" / "real-packages"))
# The TensorRT versions checked: JetPack 6's, the last 10.x, the newest 11.x.
TENSORRT_VERSIONS = ("10.3.0", "10.16.1.11", "11.4.0.106")
CUDA_PYTHON_VERSIONS = ("12.2.1", "12.9.0", "13.0.0")
SHIM = "from tensorrt_bindings import *  # as the tensorrt-cu12 meta package installs it\n" \
       "from tensorrt_bindings import __version__\n"


class Unavailable(RuntimeError):
    """The package could not be fetched or prepared here (the test skips with this reason)."""


def not_here(message: str) -> None:
    """Skip with ``message``; fail instead where ``SAM2EDGE_REQUIRE_REAL_PACKAGES=1`` (CI: ``.ci/run``),
    so that the conformance checks cannot silently stop running there."""
    import pytest

    if os.environ.get("SAM2EDGE_REQUIRE_REAL_PACKAGES") == "1":
        pytest.fail(f"{message} (SAM2EDGE_REQUIRE_REAL_PACKAGES=1)")
    pytest.skip(message)


def _run(cmd: List[str], what: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{what}: {e}") from e
    if r.returncode:
        raise Unavailable(f"{what} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return r.stdout


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def pip_target(requirement: str) -> Path:
    """``requirement`` (with its dependencies) installed into a folder of its own; cached."""
    name = re.sub(r"[^A-Za-z0-9.=_-]", "_", requirement)
    dest = CACHE / "pip" / f"{name}-py{_python_tag()}"
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
          "--target", str(tmp), requirement], f"pip install {requirement}")
    (tmp / ".complete").write_text(requirement)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _wheel(version: str) -> Path:
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"tensorrt_cu12_bindings-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        py = _python_tag()
        _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
              "--only-binary=:all:", "--python-version", py, "--platform", "manylinux_2_28_x86_64",
              "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
              f"tensorrt-cu12-bindings=={version}", "-d", str(wheels)],
             f"pip download tensorrt-cu12-bindings=={version}")
        found = sorted(wheels.glob(pattern))
    if not found:
        raise Unavailable(f"no wheel of tensorrt-cu12-bindings=={version} for Python {_python_tag()}")
    return found[0]


def _stubs(version: str, sofile: Path, out: Path) -> None:
    """Stub libraries for every ``libnv*`` the bindings need, exporting every entry point they import."""
    for tool in ("gcc", "readelf", "nm"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (needed to build stub TensorRT libraries)")
    dyn = _run(["readelf", "-d", str(sofile)], "readelf")
    needed = [n for n in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn) if n.startswith("libnv")]
    undefined = [line.split()[-1] for line in _run(["nm", "-D", "--undefined-only", str(sofile)], "nm").splitlines()
                 if len(line.split()) == 2 and line.split()[0] == "U"]
    symbols = sorted({s for s in undefined if "@" not in s and not s.startswith(("Py", "_"))
                      and s not in ("dlopen", "dlsym", "dlclose", "dlerror", "pthread_once")})
    out.mkdir(parents=True, exist_ok=True)
    src = out / "stubs.c"
    src.write_text("/* entry points of the TensorRT libraries; each returns NULL */\n"
                   + "".join(f"void* {s}(void) {{ return 0; }}\n" for s in symbols))
    for lib in needed:
        _run(["gcc", "-shared", "-fPIC", "-o", str(out / lib), str(src), f"-Wl,-soname,{lib}"], f"gcc {lib}")
    (out / "stubbed.json").write_text(json.dumps({"needed": needed, "symbols": symbols}))


def tensorrt_bindings(version: str) -> Dict[str, str]:
    """Environment variables under which ``import tensorrt`` is the real bindings of ``version``."""
    root = CACHE / "tensorrt" / f"{version}-py{_python_tag()}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        with zipfile.ZipFile(_wheel(version)) as z:
            z.extractall(root / "site")
        sofile = next((root / "site" / "tensorrt_bindings").glob("tensorrt*.so"), None)
        if sofile is None:
            raise Unavailable(f"the tensorrt-cu12-bindings {version} wheel has no tensorrt*.so")
        _stubs(version, sofile, root / "stubs")
        shim = root / "shim" / "tensorrt"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text(SHIM)
        (root / ".complete").write_text(version)
    return {"LD_LIBRARY_PATH": str(root / "stubs"),
            "PYTHONPATH": os.pathsep.join([str(root / "shim"), str(root / "site"), str(ROOT)])}
