"""Conformance with the real TensorRT Python API of 10.3, 10.16 and 11.4, and with real cuda-python.

Each TensorRT version's bindings (real wheels from PyPI over stub libraries,
``tests/real_packages.py``) are imported in a subprocess of their own, which
runs ``tests/trt_api/cases_*.py``: the builder on the project's exported
stages (fp32, fp16, int8 folders at 256 px) and the runner, with stand-ins
for what needs the library. Marker ``trt_api``; skipped with the reason where
PyPI, gcc or binutils are unavailable. No engine is built or run here: these
check the code against TensorRT's API, not TensorRT itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import real_packages as rp

pytestmark = pytest.mark.trt_api


@pytest.fixture(scope="module")
def folders(tiny_engines, fp16_engines, int8_engines):
    from tests.dense_helpers import built

    return {"fp32": str(tiny_engines), "fp16": str(fp16_engines), "int8": str(int8_engines),
            "dense-fp16": str(built("unext-split-fp16"))}


def _env(version: str, **extra) -> dict:
    try:
        env = rp.tensorrt_bindings(version)
    except rp.Unavailable as e:
        rp.not_here(f"the real TensorRT {version} bindings cannot be prepared here: {e}")
    out = dict(os.environ, **extra)
    out["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env["LD_LIBRARY_PATH"], os.environ.get("LD_LIBRARY_PATH")) if p)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (env["PYTHONPATH"], os.environ.get("PYTHONPATH")) if p)
    return out


@pytest.mark.parametrize("version", rp.TENSORRT_VERSIONS)
def test_builder_and_runner_against_the_real_bindings(version, folders):
    env = _env(version, SAM2EDGE_TRT_FOLDERS=json.dumps(folders))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                        "tests/trt_api/cases_build.py", "tests/trt_api/cases_runtime.py"],
                       cwd=rp.ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(f"--- TensorRT {version} (real bindings) ---\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}")
    assert r.returncode == 0, f"TensorRT {version}: conformance cases failed"
    assert f"{version}" in r.stdout or "passed" in r.stdout
