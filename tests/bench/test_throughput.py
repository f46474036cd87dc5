"""bench.throughput on the small (256 px) engines: files produced, bad input rejected.

Never asserts timings (they depend on the machine and its load).
"""

from __future__ import annotations

import json
import shutil

import pytest

from bench.throughput import main


def _run(tmp_path, *extra):
    return main(["--shots", "1", "--batch", "1,2", "--iterations", "2", "--warmup", "0",
                 "--peak-size", "256", "--out", str(tmp_path / "r"), *extra])


def test_report_files(tiny_engines, tmp_path):
    assert _run(tmp_path, "--model-dir", str(tiny_engines), "--compare-pytorch") == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    for key in ("machine", "versions", "settings", "peak", "flops", "variants", "pytorch"):
        assert key in rec
    v = rec["variants"][0]
    stages = {r["stage"] for r in v["stages"]}
    assert stages == {"image_encoder", "memory_encoder", "memory_attention", "mask_decoder"}
    assert all(r["gflop"] > 0 and "speedup_vs_pytorch" in r for r in v["stages"])
    p = v["pipeline"][0]
    assert p["shots"] == 1 and p["frames_per_s"] > 0 and "frame_speedup_vs_pytorch" in p
    assert set(p["frame_stages"]) >= {"preprocess", "image_encoder", "memory_attention",
                                      "mask_decoder", "postprocess", "total", "host"}
    fs = p["frame_stages"]
    assert 0 <= fs["host"]["median"] < fs["total"]["median"]
    assert [b["batch"] for b in v["batch"]] == [1, 2]
    assert v["peak_rss_mb"] > 0 and rec["peak"]["cpu"]["gflops"] > 0
    assert v["rss_peak_mb"] > 0 and 0 <= v["rss_growth_mb"] <= v["rss_peak_mb"]
    md = (tmp_path / "r.md").read_text()
    assert "memory_attention" in md and "frames/s" in md and "Host work per frame" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_folders_one_report(tiny_engines, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_engines, copy)
    assert main(["--model-dir", str(tiny_engines), str(copy), "--shots", "1", "--batch", "1",
                 "--iterations", "1", "--warmup", "0", "--peak-size", "256",
                 "--out", str(tmp_path / "two")]) == 0
    rec = json.loads((tmp_path / "two.json").read_text())
    assert len(rec["variants"]) == 2


def test_rounds_pool_samples(tiny_engines, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_engines, copy)
    assert main(["--model-dir", str(tiny_engines), str(copy), "--shots", "1", "--batch", "1",
                 "--iterations", "2", "--warmup", "0", "--rounds", "2", "--peak-size", "256",
                 "--compare-pytorch", "--out", str(tmp_path / "r")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    for v in rec["variants"] + [rec["pytorch"]]:
        assert all(r["n"] == 4 for r in v["stages"])  # 2 rounds x 2 iterations
        assert v["pipeline"][0]["frame"]["n"] == 4 and v["pipeline"][0]["reference"]["n"] == 2
    assert [b["n"] for b in rec["variants"][0]["batch"]] == [4]
    assert len(rec["peak"]["cpu_rounds"]) == 3  # before, and after each round
    assert rec["peak"]["cpu"]["gflops"] == max(p["gflops"] for p in rec["peak"]["cpu_rounds"])
    assert "2 rounds" in (tmp_path / "r.md").read_text()


def test_pool_rounds():
    from bench.throughput import pool_rounds

    a = {"label": "x", "stages": {"s": [1.0, 2.0]}, "batch": {4: "skipped"}, "peak_rss_mb": 5.0,
         "device_mem_mb": None}
    b = {"label": "x", "stages": {"s": [3.0]}, "batch": {4: "skipped"}, "peak_rss_mb": 7.0,
         "device_mem_mb": None}
    assert pool_rounds([a, b]) == {"label": "x", "stages": {"s": [1.0, 2.0, 3.0]},
                                   "batch": {4: "skipped"}, "peak_rss_mb": 7.0, "device_mem_mb": None}


def test_mixed_models_rejected(tiny_engines, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_engines, other)
    m = json.loads((other / "manifest.json").read_text())
    m["model"]["name"] = "small"  # another model (an edited image_size is refused earlier, as inconsistent)
    (other / "manifest.json").write_text(json.dumps(m))
    assert _run(tmp_path, "--model-dir", str(tiny_engines), str(other)) == 2
    assert "different models" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("extra, msg", [
    (["--iterations", "0"], "--iterations"),
    (["--backend", "nonsense"], "unknown backend"),
    (["--shots", "0"], "--shots"),
    (["--rounds", "0"], "--rounds"),
])
def test_bad_settings_rejected(tiny_engines, tmp_path, capsys, extra, msg):
    assert main(["--model-dir", str(tiny_engines), "--out", str(tmp_path / "r"), *extra]) == 2
    assert msg in capsys.readouterr().err


def test_missing_folder_rejected(tmp_path, capsys):
    assert main(["--model-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cpu_int8_both_times_fp32_and_int8_with_ratios(cpu_int8_engines, tiny_engines, tmp_path):
    assert main(["--model-dir", str(tiny_engines), str(cpu_int8_engines), "--cpu-int8", "both",
                 "--shots", "1", "--batch", "1", "--iterations", "1", "--warmup", "0",
                 "--peak-size", "256", "--out", str(tmp_path / "q")]) == 0
    rec = json.loads((tmp_path / "q.json").read_text())
    # tiny_engines has no INT8 files: FP32 only; the INT8 folder: FP32, then with its INT8 stages
    assert [v["cpu_int8_stages"] for v in rec["variants"]][:2] == [[], []]
    kept = json.loads((cpu_int8_engines / "manifest.json").read_text())["checks"]["cpu-int8"]["kept_int8"]
    assert rec["variants"][2]["cpu_int8_stages"] == kept and len(rec["variants"]) == 3
    assert "int8 dynamic" in rec["variants"][2]["label"]
    assert all("speedup_vs_1st" in r for v in rec["variants"][1:] for r in v["stages"])
    assert rec["peak"]["cpu_int8"]["gops"] > 0
    md = (tmp_path / "q.md").read_text()
    assert "vs 1st" in md and "INT8 GEMM" in md


def test_cpu_int8_on_without_int8_files_rejected(tiny_engines, tmp_path, capsys):
    assert main(["--model-dir", str(tiny_engines), "--cpu-int8", "on", "--out", str(tmp_path / "r")]) == 2
    assert "no dynamic-INT8 stages" in capsys.readouterr().err


# What a device with only the runtime's dependencies lacks (pyproject "dependencies").
WORKSTATION_ONLY = ("torch", "torchvision", "onnx", "sam2", "export", "calib", "psutil", "matplotlib")


def test_runs_without_the_workstation_side(tiny_engines, tmp_path):
    """bench.throughput on a folder, with torch, onnx, export/, psutil and matplotlib unimportable:
    FLOPs come from the manifest, RSS from /proc, no PNG (the CI step `scripts/runtime_only_check.sh`
    does the same in a real venv with only the runtime installed)."""
    import subprocess
    import sys

    code = ("import sys, runpy\n"
            f"for m in {WORKSTATION_ONLY!r}: sys.modules[m] = None\n"
            "sys.argv = ['bench.throughput'] + sys.argv[1:]\n"
            "runpy.run_module('bench.throughput', run_name='__main__')\n")
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", code, "--model-dir", str(tiny_engines), "--shots", "1",
                           "--batch", "1", "--iterations", "2", "--warmup", "0", "--peak-size", "256",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["peak"]["cpu"]["library"].startswith("numpy") and rec["peak"]["cpu_int8"] is None
    assert all(r["gflop"] > 0 for r in rec["variants"][0]["stages"])
    assert rec["variants"][0]["rss_peak_mb"] > 0
    assert not out.with_suffix(".png").exists()


def test_compare_pytorch_without_torch_says_what_is_missing(tiny_engines, tmp_path):
    import subprocess
    import sys

    code = ("import sys, runpy\nsys.modules['torch'] = None\n"
            "sys.argv = ['bench.throughput'] + sys.argv[1:]\n"
            "runpy.run_module('bench.throughput', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code, "--model-dir", str(tiny_engines), "--compare-pytorch",
                           "--iterations", "1", "--peak-size", "64", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "--compare-pytorch needs the workstation side" in proc.stderr


def test_stock_products_and_frame_size(stock_sam2_factory, tmp_path):
    """A stock folder also reports ImagePredictor / VideoTracker host work; --frame and --preprocess apply."""
    folder = stock_sam2_factory("2.1")[2]
    assert _run(tmp_path, "--model-dir", str(folder), "--frame", "400x300", "--preprocess", "backend") == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    v = rec["variants"][0]
    assert rec["settings"]["frame"] == [400, 300] and v["preprocess"] == "backend"
    assert set(v["products"]) == {"ImagePredictor", "VideoTracker"}
    for r in v["products"].values():
        assert r["host"]["n"] == 2 and 0 <= r["host"]["median"] < r["wall"]["median"]
    md = (tmp_path / "r.md").read_text()
    assert "| VideoTracker |" in md and "target frames 400x300, preprocess=backend" in md
    assert _run(tmp_path, "--model-dir", str(folder), "--frame", "400") == 2
