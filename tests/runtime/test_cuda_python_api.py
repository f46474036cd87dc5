"""The CUDA buffer layer against real cuda-python 12.2, 12.9 and 13.0 (no GPU, no driver here).

Each version is installed into a folder of its own (``tests/real_packages.py``)
and imported in a subprocess: ``device_status()`` must give a reason, never
raise (12.2 raises ``RuntimeError`` from ``cudaGetDeviceCount`` without a
driver), and every member the tests' :class:`~tests.cuda_fake.FakeCudart` has
must exist in the runtime module the layer picks in that version. Marker
``trt_api``; skipped with the reason where PyPI is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import real_packages as rp

pytestmark = pytest.mark.trt_api

PROBE = r"""
import json
from runtime.core.backends import cuda
from tests.cuda_fake import FakeCudart

mod = cuda._import_cudart()
wanted = sorted(n for n in vars(FakeCudart) if n.startswith("cuda"))
missing = [n for n in wanted if not hasattr(mod, n)]
kinds = [k for k in vars(FakeCudart.cudaMemcpyKind) if k.startswith("cuda")]
missing += [f"cudaMemcpyKind.{k}" for k in kinds
            if int(getattr(mod.cudaMemcpyKind, k, -1)) != getattr(FakeCudart.cudaMemcpyKind, k)]
ok, why = cuda.device_status()
print(json.dumps({"module": mod.__name__, "checked": len(wanted) + len(kinds), "missing": missing,
                  "ok": ok, "why": why}))
"""


@pytest.mark.parametrize("version", rp.CUDA_PYTHON_VERSIONS)
def test_buffer_layer_against_real_cuda_python(version):
    try:
        target = rp.pip_target(f"cuda-python=={version}")
    except rp.Unavailable as e:
        rp.not_here(f"cuda-python {version} cannot be installed here: {e}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(rp.ROOT)]))
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=rp.ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"cuda-python {version}: {r.stderr[-3000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"cuda-python {version}: {out['module']}, {out['checked']} members checked; "
          f"device_status -> {out['ok']}: {out['why']}")
    assert out["missing"] == [], f"FakeCudart has members cuda-python {version} lacks: {out['missing']}"
    assert out["ok"] is False and "no usable CUDA device" in out["why"]
