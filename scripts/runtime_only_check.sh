#!/usr/bin/env bash
# bench.throughput (and bench.objects) where only the runtime is installed: a fresh venv with the
# project's own dependencies (numpy, opencv-python-headless, onnxruntime; no
# torch, onnx, sam2, psutil or matplotlib) benchmarks a folder that .venv built.
# Run by .ci/run after the tests; usage: scripts/runtime_only_check.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
PY=${PYTHON:-python3}
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --upgrade pip
# From a copy of the tracked files: building the wheel in place would leave build/ in the checkout.
mkdir -p "$WORK/src"
git ls-files -z | tar --null -cf - -T - | tar -xf - -C "$WORK/src"
"$WORK/venv/bin/pip" install -q "$WORK/src"
for m in torch onnx sam2 psutil matplotlib; do
  if "$WORK/venv/bin/python" -c "import $m" 2>/dev/null; then
    echo "runtime-only venv has $m: the check would prove nothing" >&2; exit 1
  fi
done
.venv/bin/python -m export.build --random-weights --model tiny --image-size 256 --precision fp32 \
  --skip-tensorrt --out "$WORK/tiny-256"
# From outside the checkout, so the installed package is what runs.
(cd "$WORK" && "$WORK/venv/bin/python" -m bench.throughput --model-dir "$WORK/tiny-256" --shots 1 \
  --batch 1 --iterations 3 --warmup 1 --peak-size 512 --out "$WORK/report/tiny-256")
test -s "$WORK/report/tiny-256.md"
(cd "$WORK" && "$WORK/venv/bin/python" -m bench.objects --fewshot-dir "$WORK/tiny-256" --counts 1,2 \
  --iterations 1 --out "$WORK/report/objects")
test -s "$WORK/report/objects.md"
echo "runtime-only bench.throughput and bench.objects: ok ($WORK/report/tiny-256.md, $WORK/report/objects.md)"
