"""`python -m export.build`: outputs, reuse, and one clear error per bad input."""

import json
import os


from export.build import main
from export.models import ModelChoice
from export.assembly import write_random_checkpoints


def run(argv, capsys):
    """Exit status and stderr of ``export.build``; bad input is one line, never a traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


BASE = ["--precision", "fp32", "--model", "tiny", "--image-size", "256", "--skip-tensorrt"]


def test_output_folder_and_manifest(tiny_engines):
    names = set(os.listdir(tiny_engines))
    assert names >= set(["image_encoder.onnx", "memory_encoder.onnx", "memory_attention.onnx",
                            "mask_decoder.onnx", "constants.npz", "manifest.json"])
    assert not any(n.endswith(".part") for n in names)
    m = json.loads((tiny_engines / "manifest.json").read_text())  # the file as written
    assert m["format_version"] == 2 and m["kind"] == "sam2-fewshot" and m["status"] == "complete"
    assert m["model"]["name"] == "tiny" and m["model"]["image_size"] == 256
    assert m["model"]["random_weights"] is True
    assert m["tensorrt"]["built"] is False and m["tensorrt"]["reason"]
    assert {"torch", "sam2", "onnx", "onnxruntime"} <= set(m["provenance"]["versions"])
    assert list(m["specs"]) == list(m["stages"])  # the tensor contract is stored, in run order
    for stage, rec in m["stages"].items():
        assert len(rec["files"]["fp32"]["sha256"]) == 64 and rec["files"]["fp32"]["file"] == f"{stage}.onnx"


def test_rerun_reuses_stages(tiny_engines, capsys):
    before = {p: (tiny_engines / p).stat().st_mtime_ns for p in os.listdir(tiny_engines)
              if p.endswith(".onnx")}
    assert main(BASE + ["--random-weights", "--out", str(tiny_engines)]) == 0
    assert capsys.readouterr().out.count("up to date") == 8  # 4 stages, 2 edge graphs, 2 cpu-fused files
    after = {p: (tiny_engines / p).stat().st_mtime_ns for p in before}
    assert before == after


def test_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(BASE + ["--sam2-checkpoint", str(tmp_path / "nope.pt"), "--no-adapters",
                            "--out", str(out)], capsys)
    assert code == 2 and "does not exist" in err and not out.exists()


def test_truncated_checkpoint(tmp_path, capsys):
    sam2_path, _ = write_random_checkpoints(ModelChoice("tiny", "2.1", 256), tmp_path, adapters=None)
    data = sam2_path.read_bytes()
    sam2_path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, err = run(BASE + ["--sam2-checkpoint", str(sam2_path), "--no-adapters", "--out", str(out)], capsys)
    assert code == 2 and "truncated" in err and not out.exists()


def test_checkpoint_of_another_model(tmp_path, capsys):
    sam2_path, _ = write_random_checkpoints(ModelChoice("tiny", "2.1", 256), tmp_path, adapters=None)
    out = tmp_path / "out"
    code, err = run(["--precision", "fp32", "--model", "base_plus", "--image-size", "256",
                     "--skip-tensorrt", "--sam2-checkpoint", str(sam2_path), "--no-adapters",
                     "--out", str(out)], capsys)
    assert code == 2 and "--model says 'base_plus' but the SAM2 checkpoint says 'tiny'" in err
    assert not out.exists()


def test_unknown_model(tmp_path, capsys):
    code, err = run(["--model", "huge", "--random-weights", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "invalid choice: 'huge'" in err and "tiny" in err


def test_image_size_not_multiple_of_stride(tmp_path, capsys):
    code, err = run(BASE[:-3] + ["--image-size", "250", "--random-weights", "--out",
                                 str(tmp_path / "o")], capsys)
    assert code == 2 and "multiple of 32" in err and not (tmp_path / "o").exists()


def test_no_checkpoint_without_random_weights(tmp_path, capsys):
    code, err = run(BASE + ["--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--random-weights" in err


def test_interrupted_export_leaves_no_partial_file(tmp_path, monkeypatch):
    import export.onnx_export as ox

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ox.onnx.checker, "check_model", boom)
    out = tmp_path / "o"
    assert main(BASE + ["--random-weights", "--out", str(out)]) == 130  # one line, no traceback
    assert not any(p.suffix == ".onnx" or p.name.endswith(".part") for p in out.iterdir())
    assert not (out / "manifest.json").exists()


def test_plain_export_is_the_unoptimised_baseline(tiny_engines, plain_engines):
    """--plain-export: sam2's order of operations, nothing folded; same outputs."""
    import onnx

    from export.onnx_export import ort_session
    from runtime.core.compare import rel_l2 as relative_l2
    from runtime.core.spec import example_feeds
    from runtime.core.folder import ModelFolder

    plain = plain_engines
    assert ModelFolder.open(plain).manifest.provenance["graphs"].startswith("plain")
    assert ModelFolder.open(tiny_engines).manifest.provenance["graphs"].startswith("optimised")

    def nodes(folder, stage):
        return onnx.load(str(folder / f"{stage}.onnx")).graph.node

    def ops(folder, stage):
        return [n.op_type for n in nodes(folder, stage)]

    def pos_embed_resized(folder):
        return any(n.op_type == "Resize" and "pos_embed" in n.input[0] for n in nodes(folder, "image_encoder"))

    # Hiera's bicubic position-embedding Resize is folded into a constant by default
    assert pos_embed_resized(plain) and not pos_embed_resized(tiny_engines)
    # 4 layers x 2 attentions: the value projection is folded into the output projection
    assert ops(plain, "memory_attention").count("MatMul") - ops(tiny_engines, "memory_attention").count("MatMul") == 8
    specs = ModelFolder.open(plain).specs
    for stage in ("image_encoder", "memory_attention"):
        feeds = example_feeds(specs[stage], {"batch": 1, "objects": 2, "num_mem": 2, "num_ptr": 2}, seed=4)
        a = ort_session(plain / f"{stage}.onnx").run(None, feeds)
        b = ort_session(tiny_engines / f"{stage}.onnx").run(None, feeds)
        assert max(relative_l2(y, x) for x, y in zip(a, b)) < 1e-5


def test_no_cpu_fused_builds_without_them_and_removes_old_ones(tiny_engines, tmp_path, capsys):
    import shutil

    from runtime import FewShotSegmenter
    from runtime.core.folder import ModelFolder

    out = tmp_path / "f"
    shutil.copytree(tiny_engines, out)
    assert (out / "memory_attention.cpu-fused.onnx").is_file()
    assert main(BASE + ["--random-weights", "--no-cpu-fused", "--out", str(out)]) == 0
    assert "removed memory_attention.cpu-fused.onnx" in capsys.readouterr().out
    assert not list(out.glob("*.cpu-fused.onnx"))
    folder = ModelFolder.open(out)
    assert all("cpu-fused" not in st.files for st in folder.manifest.stages.values())
    with FewShotSegmenter.load(out, backend="onnxruntime") as seg:  # the CPU provider takes the FP32 files
        assert seg.session.stage_files["memory_attention"] == "memory_attention.onnx"
    code, err = run(["--model", "sam2-unet", "--precision", "fp32", "--random-weights", "--skip-tensorrt",
                     "--no-cpu-fused", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "--no-cpu-fused does not apply" in err
