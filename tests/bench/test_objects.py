"""bench.objects on the small engines: its rows add up and bad settings are refused (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench.objects import main


def test_report(tiny_engines, stock_sam2_factory, tmp_path):
    _, _, stock = stock_sam2_factory("2.1")
    out = tmp_path / "objects"
    assert main(["--fewshot-dir", str(tiny_engines), "--tracker-dir", str(stock), "--counts", "1,4",
                 "--iterations", "1", "--out", str(out)]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["flow"], r["count"]): r for r in rec["rows"]}
    assert set(rows) == {(f, n) for f in ("few-shot concepts", "tracked objects") for n in (1, 4)}
    for (flow, n), r in rows.items():
        ways = r["ways"]
        assert list(ways) == ["one by one", "batched", "padded"]
        # One iteration: the tracker's timed frame is frame 2, where the odd objects are prompted.
        tracked = n if flow == "few-shot concepts" else (n + 1) // 2
        assert ways["one by one"]["calls_per_frame"] == {"memory_attention": tracked, "mask_decoder": tracked}
        assert ways["padded"]["calls_per_frame"] == {"memory_attention": 1, "mask_decoder": 1}
        assert 1 <= ways["batched"]["calls_per_frame"]["memory_attention"] <= tracked
        assert ways["one by one"]["objects_per_call"] == 1 and ways["batched"]["objects_per_call"] == 8
        for w in ways.values():
            assert 0 < w["memory_attention"]["median"] + w["mask_decoder"]["median"] < w["frame"]["median"]
            assert w["agreement"]["min_iou"] >= 0.999 and w["agreement"]["max_abs_logits"] < 1e-3
            assert w["speedup"] == pytest.approx(ways["one by one"]["frame"]["median"] / w["frame"]["median"])
    # 4 concepts with 1, 2, 3, 1 references: the two 1-reference ones share a call.
    assert rows["few-shot concepts", 4]["ways"]["batched"]["calls_per_frame"]["memory_attention"] == 3
    assert "one by one, batched, padded" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("extra", [["--counts", "0"], ["--counts", "a"], ["--iterations", "0"], []])
def test_bad_settings(tiny_engines, tmp_path, capsys, extra):
    folder = [] if extra == [] else ["--fewshot-dir", str(tiny_engines)]
    assert main([*folder, "--out", str(tmp_path / "x"), *extra]) == 2
    assert "error:" in capsys.readouterr().err
