"""bench.frame_budget on the small engines: its figures add up and bad settings are refused (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench.frame_budget import main


def test_report(tiny_engines, tmp_path):
    out = tmp_path / "fb"
    assert main(["--model-dir", str(tiny_engines), "--sizes", "320x240", "--iterations", "1", "--refs", "2",
                 "--memory", "arena,off", "--out", str(out)]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    for mode in ("host", "pre", "backend", "before"):
        h = rec["host"]["320x240"][mode]
        assert h["engine"]["median"] > 0 and h["host"]["median"] >= 0
        assert h["host"]["median"] + h["engine"]["median"] == pytest.approx(h["wall"]["median"], rel=1e-6)
    graph = rec["host"]["320x240"]["backend"]["graph"]["median"]
    assert 0 < graph < rec["host"]["320x240"]["backend"]["engine"]["median"]  # the graph ran, inside the engines' time
    assert rec["host"]["320x240"]["host"]["graph"]["median"] == 0
    assert rec["host"]["320x240"]["pre"]["graph"]["median"] > 0  # the preprocess graph alone ran
    assert set(rec["overlay"]["320x240"]) == {"smooth before", "smooth after", "noisy before", "noisy after"}
    assert [(m["mode"], m["files"]) for m in rec["memory"]] == [
        ("arena", "cpu-fused"), ("off", "cpu-fused"), ("arena", "fp32"), ("off", "fp32")]
    assert rec["memory"][0]["stage_files"]["memory_attention"] == "memory_attention.cpu-fused.onnx"
    assert rec["memory"][2]["stage_files"]["memory_attention"] == "memory_attention.onnx"
    assert all(m["peak_rss_mb"] > 0 and m["refs"] == 2 for m in rec["memory"])
    assert "Host work per frame" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("extra", [["--sizes", "12x12"], ["--sizes", "axb"], ["--memory", "pooled"],
                                   ["--files", "fp16"]])
def test_bad_settings(tiny_engines, tmp_path, capsys, extra):
    assert main(["--model-dir", str(tiny_engines), "--out", str(tmp_path / "x"), *extra]) == 2
    assert "error:" in capsys.readouterr().err
