#!/usr/bin/env bash
# Create .venv with the workstation + device + test dependencies (runs on the CPU).
# torch/torchvision are pinned (constraints.txt) to the pair that lies on this
# machine kind's disk (a CUDA build that runs on the CPU, ~5.5 GB in the venv);
# sam2 is an sdist: built without CUDA and without build isolation so its
# build does not fetch another torch (see shared platform notes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip setuptools wheel
pip install -q -c constraints.txt -e ".[export,dev]"
SAM2_BUILD_CUDA=0 pip install -q -c constraints.txt --no-build-isolation "sam2==1.1.0"
python -c "import torch, torchvision, sam2, onnx, onnxruntime, cv2; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| onnxruntime', onnxruntime.__version__)"
