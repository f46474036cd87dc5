"""bench.tracker_memory on the small stock folder: its rows, the bounded bank, and its device-memory
column on TensorRT (the CUDA query against the fake; no timing asserted)."""

from __future__ import annotations

import pytest

from bench.tracker_memory import _run, main, parse_args
from runtime.core.backends import cuda
from runtime.errors import UsageError
from tests.cuda_fake import FakeCudart


def test_rows_and_a_bounded_bank(stock_sam2_factory, capsys):
    _, _, stock = stock_sam2_factory("2.1")
    assert main(["--model-dir", str(stock), "--backend", "onnxruntime", "--frames", "40", "--every", "20",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["20", "40"]
    assert "GPU MiB" not in out  # ONNX Runtime: no device column
    held = [int(r[2]) for r in rows]
    assert held[0] == held[1] > 0  # past the 16-frame tracking window the bank stops growing
    assert "RSS change from frame 20 to frame 40" in out


def test_device_memory_in_use_reads_cudaMemGetInfo(monkeypatch):
    rt = FakeCudart()
    monkeypatch.setattr(cuda, "_CUDART", rt)
    before = cuda.device_memory_in_use()
    buf = cuda.DeviceBuffer(4096)
    assert cuda.device_memory_in_use() - before == 4096
    buf.free()
    assert cuda.device_memory_in_use() == before


def test_bad_settings_are_refused(stock_sam2_factory):
    _, _, stock = stock_sam2_factory("2.1")
    with pytest.raises(UsageError, match="--frames"):
        _run(parse_args(["--model-dir", str(stock), "--frames", "1"]))
