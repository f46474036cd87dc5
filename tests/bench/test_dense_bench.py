"""``bench.dense`` on a tiny SAM2-UNet folder: rows, report files, bad input."""

from __future__ import annotations

import json

from bench.dense import main
from tests.dense_helpers import built


def test_dense_benchmark_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["--model-dir", str(built("unet")), "--iterations", "1", "--warmup", "0", "--batch", "1,4",
               "--image-hw", "40,60", "--peak-size", "256", "--compare-pytorch", "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    v = rec["variants"][0]
    assert v["kind"] == "sam2-unet" and [r["part"] for r in v["parts"]] == ["model"]
    assert v["parts"][0]["gflop"] > 0 and v["parts"][0]["speedup_vs_pytorch"] > 0
    assert v["end_to_end"]["stages"]["total"]["median"] > 0
    assert v["batch"][1]["skipped"].startswith("engine batch axis allows at most 2")
    assert "| unet [onnxruntime, fp32] | model |" in out.with_suffix(".md").read_text()


def test_dense_benchmark_refuses_bad_input(tmp_path, capsys):
    assert main(["--model-dir", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model-dir", str(built("unet")), "--iterations", "0", "--out", str(tmp_path / "b")]) == 2
