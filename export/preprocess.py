"""The preprocess graph of SAM2 folders: a uint8 frame -> the image encoder's input, on the backend.

The antialiased bilinear resize of :func:`runtime.sam2.inputs.image_to_model_input`
is, for one frame size, a fixed separable linear map with a few taps per output
pixel and axis (:func:`runtime.core.resize.filter_taps`). The graph takes those
taps as inputs (the runtime computes them once per frame size), so one graph
serves every frame size in its profile::

    frame [H,W,3] uint8 -Cast-> Transpose [3,H,W] -Gather(col_idx, axis 2)-> [3,H,S,Kw]
      * col_w, ReduceSum(-1) -> [3,H,S] -Transpose-> [3,S,H] -Gather(row_idx, axis 2)-> [3,S,S,Kh]
      * row_w, ReduceSum(-1) -> [3,S(w),S(h)] / 255 -Transpose-> image [1,3,S,S]

Only Cast, Transpose, Gather, Mul, ReduceSum and Unsqueeze: no GEMM, so no
TF32 on TensorRT, and every product of the reference is computed in FP32 as
in NumPy (the sums in another order: rel. L2 ~1e-7). Width first, then height,
as the reference does. The graph is written with ``onnx.helper`` (no PyTorch)
and verified in ONNX Runtime against the NumPy reference before it is recorded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.core.compare import MODEL_INPUT_PARITY, compare_outputs, worst
from runtime.core.fileio import atomic_path, sha256_file
from runtime.core.folder import FileRecord, StageRecord, onnx_name
from runtime.core.spec import StageSpec
from runtime.sam2.inputs import image_to_model_input, preprocess_feeds

OPSET = 17
_ONNX_TYPES = {"uint8": TensorProto.UINT8, "int32": TensorProto.INT32, "float32": TensorProto.FLOAT}


def preprocess_graph(spec: StageSpec) -> onnx.ModelProto:
    """The checked ONNX model of ``spec`` (:func:`runtime.sam2.spec.preprocess_spec`)."""
    def axes(name, values):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    node = helper.make_node
    nodes = [
        node("Cast", ["frame"], ["frame_f"], to=TensorProto.FLOAT),
        node("Transpose", ["frame_f"], ["chw"], perm=[2, 0, 1]),
        node("Gather", ["chw", "col_idx"], ["cols"], axis=2),            # [3,H,S,Kw]
        node("Mul", ["cols", "col_w"], ["cols_w"]),
        node("ReduceSum", ["cols_w", "last"], ["wide"], keepdims=0),     # [3,H,S]
        node("Transpose", ["wide"], ["wide_t"], perm=[0, 2, 1]),          # [3,S,H]
        node("Gather", ["wide_t", "row_idx"], ["rows"], axis=2),         # [3,S,S,Kh]
        node("Mul", ["rows", "row_w"], ["rows_w"]),
        node("ReduceSum", ["rows_w", "last"], ["both"], keepdims=0),     # [3,S(w),S(h)]
        node("Mul", ["both", "inv255"], ["scaled"]),
        node("Transpose", ["scaled"], ["chw_out"], perm=[0, 2, 1]),       # [3,S(h),S(w)]
        node("Unsqueeze", ["chw_out", "first"], ["image"]),
    ]
    consts = [axes("last", [-1]), axes("first", [0]),
              helper.make_tensor("inv255", TensorProto.FLOAT, [], [np.float32(1.0) / np.float32(255.0)])]

    def info(t):
        return helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.dtype], list(t.shape))

    graph = helper.make_graph(nodes, spec.name, [info(t) for t in spec.inputs],
                              [info(t) for t in spec.outputs], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sam2-edge export.preprocess")
    model.ir_version = 8  # what ONNX Runtime >= 1.14 and TensorRT 10's parser read
    onnx.checker.check_model(model, full_check=True)
    return model


def parity_frames(spec: StageSpec) -> List[Tuple[int, int]]:
    """Frame sizes the graph is verified at: shrinking, growing, mixed, square at S, the range's ends."""
    s = spec.outputs[0].shape[-1]
    lo, _, hi = spec.axis_ranges["frame_h"]
    sizes = [(480, 640), (720, 1280), (1080, 1920), (s, s), (lo, lo), (hi, max(lo, hi // 2)), (300, 2 * s)]
    return [(min(max(h, lo), hi), min(max(w, lo), hi)) for h, w in dict.fromkeys(sizes)]


def check_preprocess(spec: StageSpec, model: bytes, seed: int = 0) -> Dict[str, object]:
    """The graph in ONNX Runtime vs :func:`image_to_model_input` on random frames of
    :func:`parity_frames` sizes; worst figures, the FP32 gate, ``passed``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    s = spec.outputs[0].shape[-1]
    rng = np.random.default_rng(seed)
    cases = []
    for h, w in parity_frames(spec):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = image_to_model_input(frame.astype(np.float32) / np.float32(255.0), s)
        got = sess.run(["image"], preprocess_feeds(frame, s))[0]
        cases.append({"frame": [h, w], **compare_outputs({"image": got}, {"image": ref})})
    figures = worst(c["image"] for c in cases)
    return {**figures, "gate": MODEL_INPUT_PARITY.as_dict(), "passed": not MODEL_INPUT_PARITY.failures(figures),
            "reference": "runtime.sam2.inputs.image_to_model_input (NumPy, torch's antialiased bilinear)",
            "cases": cases}


def export_preprocess(spec: StageSpec, folder: Path, previous: Optional[StageRecord],
                      log: Callable[[str], None]) -> StageRecord:
    """Write ``folder/preprocess.onnx`` (atomically) and verify it; its stage record (FP32 only).
    ``previous`` (the record of an earlier build) is reused while the file on disk is this graph."""
    path = Path(folder) / onnx_name(spec.name)
    data = preprocess_graph(spec).SerializeToString()
    prev = previous.files.get("fp32") if previous else None
    if (prev and previous.parity.get("passed") and path.is_file()
            and sha256_file(path) == prev.sha256 == hashlib.sha256(data).hexdigest()):
        log(f"[preprocess] up to date, reusing {path.name}")
        return StageRecord({"fp32": prev}, parity=previous.parity)
    parity = check_preprocess(spec, data)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    lo, _, hi = spec.axis_ranges["frame_w"]
    log(f"[preprocess] {path.name}: frames {lo}..{hi} px per side -> the model input on the backend; "
        f"rel L2 {parity['rel_l2']:.1e} vs the NumPy reference (gate {MODEL_INPUT_PARITY.max_rel_l2:.0e}) "
        f"{'ok' if parity['passed'] else 'FAILED'}")
    return StageRecord({"fp32": FileRecord(path.name, sha256_file(path))}, parity=parity)
