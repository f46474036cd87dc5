"""Dynamic INT8 for ONNX Runtime on the CPU (export.build --cpu-int8-stages), hiera-tiny at 256 px."""

import shutil

import numpy as np
import pytest

from calib.build import build_int8, calibration
from calib.dynamic import count_integer_matmuls, quantize_dynamic_stage
from calib.episodes import generate_episodes
from calib.gates import Gates
from runtime.core.compare import StageGate, mask_iou
from calib.quantize import QuantizationError
from export.build import main
from runtime.core.fileio import sha256_file
from runtime.core.folder import ModelFolder
from runtime.sam2.fewshot import FewShotSegmenter

from conftest import CPU_INT8_STAGES as INT8

BASE = ["--precision", "fp32", "--model", "tiny", "--image-size", "256", "--skip-tensorrt",
        "--random-weights"]


@pytest.fixture
def int8_folder(cpu_int8_engines):
    return cpu_int8_engines


def test_build_records_gated_int8_files(int8_folder):
    m = ModelFolder.open(int8_folder).manifest
    rep = m.checks["cpu-int8"]
    assert rep["scheme"] == "dynamic" and rep["int8_stages"] == list(INT8)
    for s in INT8:
        r = rep["table"]["stages"][s]
        assert r["precision"] == "int8 (dynamic)" and 0 < r["rel_l2"] < 0.1 and r["cosine"] > 0.99
        assert m.stages[s].measured["cpu-int8"]["cosine"] == r["cosine"]  # recorded on the stage too
    assert rep["table"]["stages"]["image_encoder"]["precision"] == "fp32"
    assert set(rep["kept_int8"]) == {s for s, st in m.stages.items() if "cpu-int8" in st.files}
    assert rep["passed"] == (rep["kept_int8"] == list(INT8))
    for s in rep["kept_int8"]:
        rec = m.stages[s].files["cpu-int8"]
        path = int8_folder / rec.file
        assert rec.file == f"{s}.cpu-int8.onnx" and sha256_file(path) == rec.sha256
        assert count_integer_matmuls(path)["MatMulInteger"] > 0
    assert not any(p.name.endswith(".part") for p in int8_folder.iterdir())


def test_runtime_picks_int8_on_cpu_and_matches_fp32(int8_folder):
    kept = ModelFolder.open(int8_folder).manifest.checks["cpu-int8"]["kept_int8"]
    assert kept, "random tiny weights pass the default gate at 256 px"
    ep = generate_episodes(1, size=256, refs=1, targets=2, seed=11)[0]
    logits = {}
    for mode in ("auto", "off"):
        with FewShotSegmenter.load(int8_folder, backend="onnxruntime", cpu_int8=mode) as seg:
            files = seg.session.stage_files
            int8 = {s for s, f in files.items() if f.endswith(".cpu-int8.onnx")}
            assert int8 == (set(kept) if mode == "auto" else set())
            seg.add_reference(*ep.references[0], concept="c")
            logits[mode] = [seg.segment(t)["c"].logits for t in ep.targets]
    for a, b in zip(logits["auto"], logits["off"]):
        assert not np.array_equal(a, b)  # the INT8 graphs really ran
        assert mask_iou(a > 0, b > 0) >= 0.9


def test_gate_failure_drops_the_files(int8_folder, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(int8_folder, folder)
    f = ModelFolder.read(folder)
    res = build_int8(f, ["memory_attention"], calibration(f, None, lambda _: None, generated=1), lambda _: None,
                     scheme="dynamic", apply_suggestion=True, gates=Gates(stage=StageGate(min_cosine=1.01)))
    assert not res["passed"] and res["kept_int8"] == []
    assert "cpu-int8" not in f.stage("memory_attention").files
    assert not (folder / "memory_attention.cpu-int8.onnx").exists()
    assert "keep FP32" in res["suggestion"]["text"]


def test_unknown_scheme(int8_folder):
    with pytest.raises(ValueError, match="unknown INT8 scheme 'fast'"):
        build_int8(ModelFolder.read(int8_folder), ["memory_attention"], {}, print, scheme="fast")


def test_broken_onnx_is_a_named_error_and_writes_nothing(tmp_path):
    src = tmp_path / "bad.onnx"
    src.write_bytes(b"not an onnx file")
    dst = tmp_path / "out.cpu-int8.onnx"
    with pytest.raises(QuantizationError, match="memory_attention: dynamic INT8 quantization failed"):
        quantize_dynamic_stage(src, dst, stage="memory_attention")
    assert list(tmp_path.iterdir()) == [src]


def test_bad_stage_name_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(BASE + ["--cpu-int8-stages", "memory_atention", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--cpu-int8-stages" in err and "memory_atention" in err and "memory_attention" in err
    assert not out.exists()


def _matmul_model(path, seed=0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((32, 16)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("reduce_range, limit", [(False, 127), (True, 64)])
def test_weight_range_reaches_the_quantized_weights(tmp_path, reduce_range, limit):
    import onnx
    from onnx import numpy_helper

    src, dst = tmp_path / "m.onnx", tmp_path / "m.cpu-int8.onnx"
    _matmul_model(src)
    quantize_dynamic_stage(src, dst, reduce_range=reduce_range)
    ints = [numpy_helper.to_array(i) for i in onnx.load(dst).graph.initializer]
    w = next(a for a in ints if a.dtype == np.int8 and a.size == 32 * 16)
    assert np.abs(w.astype(int)).max() == limit  # per-channel: each column's largest weight hits it


def test_weight_range_choice():
    from calib.dynamic import resolve_weight_range
    from runtime.core.backends.cpu_features import saturates_full_range

    assert resolve_weight_range("reduced")[0] is True and resolve_weight_range("full")[0] is False
    reduced, why = resolve_weight_range("auto")
    assert reduced is saturates_full_range() and why.startswith("auto: ")
    with pytest.raises(ValueError, match="unknown INT8 weight range 'half'"):
        resolve_weight_range("half")


def test_build_records_the_weight_range_for_this_cpu(int8_folder):
    from runtime.core.backends.cpu_features import saturates_full_range

    m = ModelFolder.open(int8_folder).manifest
    assert m.checks["cpu-int8"]["reduce_range"] is saturates_full_range()
    assert m.checks["cpu-int8"]["weight_range"].startswith("auto: ")
    for s in m.checks["cpu-int8"]["kept_int8"]:
        assert m.stages[s].files["cpu-int8"].info["reduce_range"] is saturates_full_range()
