"""bench.edge_graphs: the host vs edge-graph timing report, and its agreement check."""

from __future__ import annotations

import json

import numpy as np

from bench.edge_graphs import main

SMALL = ["--sizes", "64x48,120x90", "--image-size", "256", "--dense-size", "64", "--iterations", "1"]


def test_report_times_each_preprocessing_both_ways(tmp_path, capsys):
    assert main([*SMALL, "--out", str(tmp_path / "eg")]) == 0
    rec = json.loads((tmp_path / "eg.json").read_text())
    assert [(r["semantics"], r["frame"]) for r in rec["rows"]] == [
        (s, f) for s in ("image-predictor", "video-loader", "pillow-bilinear") for f in ([48, 64], [90, 120])]
    assert all(r["host"]["n"] == r["graph"]["n"] == 1 and r["rel_l2"] <= 1e-6 for r in rec["rows"])
    assert "| video-loader | 256 | 120x90 |" in (tmp_path / "eg.md").read_text()


def test_a_graph_that_disagrees_with_the_host_is_reported(tmp_path, capsys, monkeypatch):
    import export.edges as edges  # the host twins of the edge graph kinds live there

    real = edges.pil_model_input
    monkeypatch.setattr(edges, "pil_model_input", lambda f, s, filt: real(f, s, filt) + np.float32(1 / 255))
    assert main([*SMALL, "--out", str(tmp_path / "eg")]) == 2
    assert "pillow-bilinear at 64x48: the graph and the host disagree" in capsys.readouterr().err
    assert not (tmp_path / "eg.json").exists()
