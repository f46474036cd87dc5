"""INT8 build of hiera-tiny at 256 px from generated episodes, end to end in ONNX Runtime."""

import json

import numpy as np
import onnx
import pytest

from calib.build import build_int8
from calib.episodes import generate_episodes, save_episodes
from calib.fp16 import fp32_pinned_nodes, fp16_runner
from calib.gates import Gates, check, suggest_mixed
from calib.quantize import count_qdq
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
    res = build_int8(folder, ["memory_encoder", "memory_attention"], calib_dir,
                     logs.append, method="minmax",
                     cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
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


def test_fp16_numerics_memory_encoder(tiny_engines, tmp_path):
    spec = ModelFolder.open(tiny_engines).specs["memory_encoder"]
    src = tiny_engines / "memory_encoder.onnx"
    assert fp32_pinned_nodes(onnx.load(str(src)))  # decomposed LayerNorm2d is pinned
    r16 = fp16_runner(spec, src, tmp_path, mode="emulated")
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner

    r32 = OnnxRuntimeStageRunner(spec, src).activate()
    rng = np.random.default_rng(0)
    feeds = {"vision_feat": rng.standard_normal((1, 256, 16, 16)).astype(np.float32),
             "mask_logits": rng.uniform(-10, 10, (1, 1, 256, 256)).astype(np.float32)}
    a, b = r32.infer(feeds)["maskmem_features"], r16.infer(feeds)["maskmem_features"]
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 1e-2 and r16.fp16_mode == "emulated"
