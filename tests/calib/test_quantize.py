"""Q/DQ INT8 + FP16 and FP16 files of hiera-tiny at 256 px, measured end to end in ONNX Runtime."""

import json

import numpy as np
import onnx
import pytest

from calib.build import build_int8, calibration
from calib.episodes import generate_episodes, save_episodes
from calib.fp16 import FP32_OPS, precision_summary, write_fp16
from calib.gates import Gates, check, suggest_mixed
from calib.quantize import QDQ_OPSET, count_qdq, trt_qdq_problems
from calib.report import format_table, json_ready
from runtime.core.fileio import sha256_file
from runtime.core.compare import REDUCED_END_TO_END
from runtime.core.folder import ModelFolder


@pytest.fixture(scope="module")
def int8_result(tiny_engines, tmp_path_factory):
    calib_dir = save_episodes(tmp_path_factory.mktemp("episodes"),
                              generate_episodes(3, size=256, refs=1, targets=1, seed=5))
    folder = ModelFolder.read(tiny_engines)  # its manifest in memory, as the build's own
    logs = []
    ctx = calibration(folder, calib_dir, logs.append, cache_dir=tmp_path_factory.mktemp("cache"))
    res = build_int8(folder, ["memory_encoder", "memory_attention"], ctx, logs.append, method="minmax")
    return res, folder.manifest.stages, logs


def test_int8_files_and_records(tiny_engines, int8_result):
    res, records, _ = int8_result
    for s in ("memory_encoder", "memory_attention"):
        rec = records[s].files["int8"]
        assert records[s].precision == "int8" and rec.file == f"{s}.int8.onnx"
        path = tiny_engines / rec.file
        assert sha256_file(path) == rec.sha256
        q = count_qdq(path)
        assert q["QuantizeLinear"] > 0 and q["DequantizeLinear"] > 0
        # TensorRT-compatible: signed, symmetric (zero point 0) Q/DQ
        m = onnx.load(str(path))
        zps = {i.name: i for i in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in zps:
                z = onnx.numpy_helper.to_array(zps[n.input[2]])
                assert z.dtype == np.int8 and not z.any()
        # TensorRT's parser: DequantizeLinear only of INT8 (no INT32 bias); FP16 outside Q/DQ, opset 19.
        assert trt_qdq_problems(m) == []
        assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {QDQ_OPSET}
        summary = precision_summary(m)
        assert summary["weights"]["float16"] > 0 and set(summary["fp32_nodes"]) <= set(FP32_OPS) | {
            "QuantizeLinear", "DequantizeLinear"}
        assert rec.info["rest"].startswith("fp16")
        src = records[s].to_dict()["engine_source"]  # what the engine is built from, and what it measured
        assert src["file"] == f"{s}.int8.onnx" and src["measured"]["cosine"] == records[s].measured["int8"]["cosine"]
    assert "int8" not in records["image_encoder"].files and records["image_encoder"].precision == "fp32"


def test_accuracy_table_and_gates(int8_result):
    res, _, logs = int8_result
    t = res["table"]
    assert t["stages"]["image_encoder"]["precision"] == "fp32"
    for s in ("memory_encoder", "memory_attention"):
        r = t["stages"][s]
        assert r["precision"] == "int8" and 0 < r["rel_l2"] < 1 and 0.5 < r["cosine"] <= 1.0
    assert t["e2e"]["targets"] == 3 and 0 <= t["e2e"]["worst_iou"] <= t["e2e"]["mean_iou"] <= 1
    assert isinstance(res["passed"], bool)
    assert res["passed"] == (not res["failed_stages"] and not res["reasons"])
    assert "end to end mask IoU" in res["text"] and any("accuracy vs FP32" in m for m in logs)
    if not res["passed"]:
        assert res["suggestion"] and res["suggestion"]["text"]
    json.dumps(json_ready(res))  # JSON-ready for the manifest


def test_gate_logic_and_suggestion():
    def table(cos, iou):
        return {"stages": {s: {"precision": "int8" if s in cos else "fp32",
                               "rel_l2": 0.0, "cosine": cos.get(s, 1.0)}
                           for s in ("image_encoder", "memory_encoder")},
                "e2e": {"mean_iou": iou, "worst_iou": iou, "targets": 1}}
    assert check(table({"image_encoder": 0.999}, 0.99))["passed"]
    v = check(table({"image_encoder": 0.9, "memory_encoder": 0.999}, 0.5))
    assert not v["passed"] and v["failed_stages"] == ["image_encoder"]
    # only e2e fails: the lowest-cosine INT8 stage is blamed
    v = check(table({"image_encoder": 0.995, "memory_encoder": 0.999}, 0.5))
    assert v["failed_stages"] == ["image_encoder"]
    sug = suggest_mixed(["image_encoder", "memory_encoder"],
                        table({"image_encoder": 0.9, "memory_encoder": 0.999}, 0.5),
                        lambda ss: table({s: 0.999 for s in ss}, 0.99), log=lambda m: None)
    assert sug["int8_stages"] == ["memory_encoder"] and sug["keep_higher_precision"] == ["image_encoder"]
    assert "image_encoder" in sug["text"]
    assert Gates().e2e == REDUCED_END_TO_END and REDUCED_END_TO_END.min_mean_iou == 0.95
    assert "FAIL" in format_table(table({"image_encoder": 0.9}, 0.5))


def test_trt_qdq_check_finds_int32_bias_dequantization(tiny_engines, tmp_path):
    """ONNX Runtime's default (QuantizeBias on) puts INT32 DequantizeLinear on Conv biases: the check says so."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from calib.quantize import make_reader

    folder = ModelFolder.read(tiny_engines)
    spec = folder.specs["memory_encoder"]
    rng = np.random.default_rng(0)
    feeds = [{"vision_feat": rng.standard_normal((1, 256, 16, 16)).astype(np.float32),
              "mask_logits": rng.uniform(-10, 10, (1, 1, 256, 256)).astype(np.float32)}]
    dst = tmp_path / "default.onnx"
    quantize_static(str(tiny_engines / "memory_encoder.onnx"), str(dst), make_reader(feeds, spec.input_names),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv"])
    problems = trt_qdq_problems(onnx.load(str(dst)))
    assert problems and all("INT32 weight" in p for p in problems)


def test_fp16_file_of_every_stage_loads_and_is_close(tiny_engines, tmp_path):
    """Real FP16 graphs in ONNX Runtime's CPU provider: FP16 weights, the FP32_OPS in FP32, FP32 I/O."""
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.core.compare import rel_l2

    folder = ModelFolder.read(tiny_engines)
    rng = np.random.default_rng(0)
    for name, spec in folder.specs.items():
        src, dst = tiny_engines / f"{name}.onnx", tmp_path / f"{name}.fp16.onnx"
        info = write_fp16(src, dst)
        assert info["weights"]["float16"] > info["weights"]["float32"] and info["fp32_ops"] == list(FP32_OPS)
        m = onnx.load(str(dst))
        assert all(v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for v in list(m.graph.input)
                   + list(m.graph.output))
        axes = {a: r[1] for a, r in spec.axis_ranges.items()}
        feeds = {t.name: (rng.standard_normal(t.concrete_shape(axes)) * 0.5).astype(np.float32) for t in spec.inputs}
        with OnnxRuntimeStageRunner(spec, src) as r32, OnnxRuntimeStageRunner(spec, dst) as r16:
            a, b = r32.infer(feeds), r16.infer(feeds)
            for k in a:
                assert b[k].dtype == np.float32
                assert rel_l2(b[k], a[k]) < 5e-3, (name, k)
    assert set(precision_summary(onnx.load(str(tmp_path / "image_encoder.fp16.onnx")))["fp32_nodes"]) & {
        "LayerNormalization", "Softmax", "ReduceMean"}


def test_calibration_passes_stay_within_their_budget(tiny_engines):
    """Tensors split into passes by bytes per inference: every pass within the budget (one big tensor alone)."""
    from calib.quantize import passes, tensor_bytes, weight_nodes

    model = onnx.load(str(tiny_engines / "image_encoder.onnx"))
    nodes = set(weight_nodes(model))
    init = {i.name for i in model.graph.initializer}
    names = [t for n in model.graph.node if n.name in nodes for t in (*n.input, *n.output) if t not in init]
    sizes = tensor_bytes(model, names)
    assert sizes and all(v > 0 for v in sizes.values())  # shapes are known at a fixed image size
    budget = max(sizes.values()) * 3
    groups = passes(sizes, budget)
    assert len(groups) > 1 and sorted(t for g in groups for t in g) == sorted(sizes)
    assert all(sum(sizes[t] for t in g) <= budget for g in groups)
    assert passes({"a": 10, "b": 10}, 5) == [["a"], ["b"]]
    # Attention products (two activations) are not quantized: no MatMul without a weight in the list.
    assert all(any(x in init for x in n.input) for n in model.graph.node if n.name in nodes)
