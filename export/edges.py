"""The edge graphs: a uint8 frame -> the encoder's input, low-res logits -> frame masks.

Both resizes are, for one frame size, fixed separable linear maps with a few
taps per output pixel and axis (:func:`runtime.core.resize.filter_taps`). The
graphs take those taps as inputs (the runtime computes them once per frame
size), so one graph serves every frame size in its profile.

*preprocess* (the antialiased bilinear resize of
:func:`runtime.sam2.inputs.image_to_model_input`)::

    frame [H,W,3] uint8 -Cast-> Transpose [3,H,W] -Gather(col_idx, axis 2)-> [3,H,S,Kw]
      * col_w, ReduceSum(-1) -> [3,H,S] -Transpose-> [3,S,H] -Gather(row_idx, axis 2)-> [3,S,S,Kh]
      * row_w, ReduceSum(-1) -> [3,S(w),S(h)] / 255 -Transpose-> image [1,3,S,S]

*the Pillow graph* (:func:`pil_preprocess_graph`: SAM2 folders'
*video_preprocess*, sam2's video loader, bicubic; the dense folders'
*preprocess*, the authors' bilinear; :func:`runtime.core.edges.pil_model_input`),
in Pillow's integer arithmetic, each pass summed from 2**21, clipped and
shifted to 0..255 as ``Resample.c`` does; the weights (fed, so one graph serves
both filters) are Pillow's fixed-point ones (22 fraction bits)::

    frame [H,W,3] uint8 -Cast float32, int32-> Transpose [3,H,W] -If(vertical_first)->
      else: Gather(col_idx, axis 2) [3,H,S,Kw] * col_w, ReduceSum(-1) + 2**21, Max 0,
            Min 2**30-1, Div 2**22 -> [3,H,S] (0..255), the same over rows -> [3,S,S]
      then: rows first (Gather axis 1, ReduceSum axis 2), then columns -> [3,S,S]
    -Gather(levels [256])-> float32 -Unsqueeze-> image [1,3,S,S]

Pillow 13 runs the vertical pass first for some tall frames (the order
matters: each pass rounds to uint8), so both orders are in the graph and the
runtime says which one a frame size takes.

*postprocess* (plain bilinear, two taps per axis, as sam2's
``postprocess_masks``; each tap a Gather of its own so no tensor is larger
than the output)::

    low_res [N,s,s] -Gather(col_idx[:,k], axis 2) * col_w[:,k], summed over k-> [N,s,W]
      -Gather(row_idx[:,k], axis 1) * row_w[:,k,None], summed over k-> logits [N,H,W]
      -Greater(threshold)-> mask [N,H,W] bool

Only Cast, Transpose, Gather, Mul, Add, ReduceSum, Max, Min, Div, If, Unsqueeze
and Greater: no GEMM, so no TF32 on TensorRT; every product of the float graphs is
computed in FP32 as in NumPy (width first, then height, as torch does), the
Pillow graph's in int32 as in Pillow (in Pillow's pass order). The
graphs are written with ``onnx.helper`` (no PyTorch) and verified in ONNX
Runtime against their NumPy reference before they are recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.core.compare import EDGE_PARITY, compare_outputs, mask_iou, worst
from runtime.core.edges import UNIT_LEVELS, pil_model_input, pil_preprocess_feeds
from runtime.core.fileio import atomic_path, sha256_file
from runtime.core.folder import FileRecord, StageRecord, onnx_name
from runtime.core.images import rgb_to_float
from runtime.core.resize import resize_bilinear
from runtime.core.spec import StageSpec
from runtime.sam2.inputs import (image_to_model_input, postprocess_feeds, preprocess_feeds,
                                 video_frame_to_model_input, video_preprocess_feeds)
from runtime.sam2.spec import POSTPROCESS, PREPROCESS, VIDEO_PREPROCESS

OPSET = 17
_ONNX_TYPES = {"uint8": TensorProto.UINT8, "int32": TensorProto.INT32, "float32": TensorProto.FLOAT,
               "bool": TensorProto.BOOL}
node = helper.make_node


def _ints(name: str, values) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _model(spec: StageSpec, nodes, consts) -> onnx.ModelProto:
    def info(t):
        return helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.dtype], list(t.shape))

    graph = helper.make_graph(nodes, spec.name, [info(t) for t in spec.inputs],
                              [info(t) for t in spec.outputs], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=f"sam2-edge export.edges ({spec.name})")
    model.ir_version = 8  # what ONNX Runtime >= 1.14 and TensorRT 10's parser read
    onnx.checker.check_model(model, full_check=True)
    return model


def preprocess_graph(spec: StageSpec) -> onnx.ModelProto:
    """The checked ONNX model of ``spec`` (:func:`runtime.sam2.spec.preprocess_spec`)."""
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
    consts = [_ints("last", [-1]), _ints("first", [0]),
              helper.make_tensor("inv255", TensorProto.FLOAT, [], [np.float32(1.0) / np.float32(255.0)])]
    return _model(spec, nodes, consts)


_PIL_BITS = 22  # Pillow's PRECISION_BITS


def _pil_round(a: str, src: str, axes: str, out: str) -> list:
    """Pillow's pass tail: ``src`` terms summed over ``axes`` from 2**21, clipped, >> 22 -> ``out`` (0..255)."""
    return [node("ReduceSum", [src, axes], [f"{a}_sum"], keepdims=0),
            node("Add", [f"{a}_sum", "half"], [f"{a}_rounded"]),
            node("Max", [f"{a}_rounded", "zero"], [f"{a}_pos"]),
            node("Min", [f"{a}_pos", "top"], [f"{a}_clipped"]),
            node("Div", [f"{a}_clipped", "one"], [out])]


def _pil_branch(vertical_first: bool, s: int) -> onnx.GraphProto:
    """Both Pillow passes over ``chw [3,H,W]`` int32 (outer scope) in one order -> ``[3,S(h),S(w)]`` levels."""
    if vertical_first:   # rows over axis 1 ([3,S,Kh,W], weights [S,Kh,1]), then columns
        p, out = "v", "v_levels"
        nodes = [node("Unsqueeze", ["row_w", "last"], ["v_row_w"]),
                 node("Gather", ["chw", "row_idx"], ["v_rows"], axis=1),
                 node("Mul", ["v_rows", "v_row_w"], ["v_rows_w"]),
                 *_pil_round("v_r", "v_rows_w", "third", "v_tall"),                    # [3,S,W]
                 node("Gather", ["v_tall", "col_idx"], ["v_cols"], axis=2),            # [3,S,S,Kw]
                 node("Mul", ["v_cols", "col_w"], ["v_cols_w"]),
                 *_pil_round("v_c", "v_cols_w", "last", out)]
    else:                # columns, then rows (over the transposed [3,S,H]), then back to [3,S(h),S(w)]
        p, out = "h", "h_levels"
        nodes = [node("Gather", ["chw", "col_idx"], ["h_cols"], axis=2),               # [3,H,S,Kw]
                 node("Mul", ["h_cols", "col_w"], ["h_cols_w"]),
                 *_pil_round("h_c", "h_cols_w", "last", "h_wide"),                    # [3,H,S]
                 node("Transpose", ["h_wide"], ["h_wide_t"], perm=[0, 2, 1]),
                 node("Gather", ["h_wide_t", "row_idx"], ["h_rows"], axis=2),          # [3,S(w),S(h),Kh]
                 node("Mul", ["h_rows", "row_w"], ["h_rows_w"]),
                 *_pil_round("h_r", "h_rows_w", "last", "h_both"),
                 node("Transpose", ["h_both"], [out], perm=[0, 2, 1])]
    info = helper.make_tensor_value_info(out, TensorProto.INT32, [3, s, s])
    return helper.make_graph(nodes, f"{p}_first", [], [info])


def pil_preprocess_graph(spec: StageSpec) -> onnx.ModelProto:
    """The checked ONNX model of ``spec`` (:func:`runtime.core.edges.pil_preprocess_spec`): the
    passes in the order ``vertical_first`` names (Pillow's, :func:`runtime.core.resize.pil_vertical_first`),
    each branch of one ``If``."""
    s = spec.outputs[0].shape[-1]
    # uint8 -> float32 -> int32 (both exact): TensorRT takes uint8 as network I/O only, and its casts
    # from uint8 to float are the ones the float preprocess graph relies on as well.
    nodes = [node("Cast", ["frame"], ["frame_f"], to=TensorProto.FLOAT),
             node("Cast", ["frame_f"], ["frame_i"], to=TensorProto.INT32),
             node("Transpose", ["frame_i"], ["chw"], perm=[2, 0, 1]),                 # [3,H,W]
             node("If", ["vertical_first"], ["levels_idx"],
                  then_branch=_pil_branch(True, s), else_branch=_pil_branch(False, s)),
             node("Gather", ["levels", "levels_idx"], ["scaled"], axis=0),           # float32 in [0, 1]
             node("Unsqueeze", ["scaled", "first"], ["image"])]

    def i32(name, v):
        return helper.make_tensor(name, TensorProto.INT32, [], [v])

    consts = [_ints("last", [-1]), _ints("third", [2]), _ints("first", [0]), i32("half", 1 << (_PIL_BITS - 1)),
              i32("zero", 0), i32("top", (256 << _PIL_BITS) - 1), i32("one", 1 << _PIL_BITS),
              helper.make_tensor("levels", TensorProto.FLOAT, [256], UNIT_LEVELS.tolist())]
    return _model(spec, nodes, consts)


def postprocess_graph(spec: StageSpec) -> onnx.ModelProto:
    """The checked ONNX model of ``spec`` (:func:`runtime.sam2.spec.postprocess_spec`)."""
    nodes = []
    for axis, src, gather_axis, out in (("col", "low_res", 2, "wide"), ("row", "wide", 1, "logits")):
        terms = []
        for k in (0, 1):
            t = f"{axis}{k}"
            nodes += [node("Gather", [f"{axis}_idx", f"k{k}"], [f"{t}_idx"], axis=1),   # [W] / [H]
                      node("Gather", [f"{axis}_w", f"k{k}"], [f"{t}_w"], axis=1),
                      node("Gather", [src, f"{t}_idx"], [f"{t}_px"], axis=gather_axis)]  # [N,s,W] / [N,H,W]
            weight = f"{t}_w"
            if axis == "row":  # a weight per row: [H] -> [H,1]
                nodes.append(node("Unsqueeze", [weight, "last"], [f"{t}_w_col"]))
                weight = f"{t}_w_col"
            nodes.append(node("Mul", [f"{t}_px", weight], [f"{t}_term"]))
            terms.append(f"{t}_term")
        nodes.append(node("Add", terms, [out]))
    nodes.append(node("Greater", ["logits", "threshold"], ["mask"]))
    consts = [_ints("last", [-1]), helper.make_tensor("k0", TensorProto.INT64, [], [0]),
              helper.make_tensor("k1", TensorProto.INT64, [], [1])]
    return _model(spec, nodes, consts)


def parity_frames(spec: StageSpec, size: int) -> List[Tuple[int, int]]:
    """Frame sizes a graph is verified at: 480p, 720p, 1080p, square at the model size ``size``,
    the range's ends, and one mixed (shrinking one axis, growing the other)."""
    lo, _, hi = spec.axis_ranges["frame_h"]
    sizes = [(480, 640), (720, 1280), (1080, 1920), (size, size), (lo, lo), (hi, max(lo, hi // 2)), (300, 2 * size)]
    return [(min(max(h, lo), hi), min(max(w, lo), hi)) for h, w in dict.fromkeys(sizes)]


def _frame_cases(feeds: Callable[[np.ndarray, int], Dict[str, np.ndarray]],
                 reference: Callable[[np.ndarray, int], np.ndarray]):
    """Parity cases of a frame -> model-input graph: random uint8 frames at :func:`parity_frames`
    sizes, the graph on ``feeds(frame, S)`` vs ``reference(frame, S)``."""
    def cases(spec: StageSpec, run, rng) -> List[Dict[str, object]]:
        s = spec.outputs[0].shape[-1]
        out = []
        for h, w in parity_frames(spec, s):
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            got = run(["image"], feeds(frame, s))[0]
            out.append({"frame": [h, w], **compare_outputs({"image": got}, {"image": reference(frame, s)})["image"]})
        return out
    return cases


def _postprocess_cases(spec: StageSpec, run, rng) -> List[Dict[str, object]]:
    low = spec.input("low_res").shape[-1]
    n = min(2, spec.axis_ranges["objects"][2])
    cases = []
    for h, w in parity_frames(spec, 4 * low):
        x = (rng.standard_normal((n, low, low)) * 8).astype(np.float32)  # logits of sam2's spread
        thr = float(rng.uniform(-1, 1))
        ref = np.stack([resize_bilinear(m, (h, w)) for m in x])
        logits, mask = run(["logits", "mask"], postprocess_feeds(x, (h, w), thr))
        cases.append({"frame": [h, w], **compare_outputs({"logits": logits}, {"logits": ref})["logits"],
                      "mask_iou": mask_iou(mask, ref > thr), "mask_is_logits_above": bool((mask == (logits > thr)).all())})
    return cases


@dataclass(frozen=True)
class EdgeGraph:
    """One kind of edge graph: how it is written (``build``), what it does, and its parity
    ``cases`` against the NumPy ``reference`` (named for the record). A frame graph also names
    its ``feeds(frame, S)`` and its ``host(frame, S)`` twin, the model input the host computes."""

    build: Callable[[StageSpec], onnx.ModelProto]
    what: str
    reference: str
    cases: Callable
    feeds: Optional[Callable[[np.ndarray, int], Dict[str, np.ndarray]]] = None
    host: Optional[Callable[[np.ndarray, int], np.ndarray]] = None


def _frame_graph(build, what: str, reference: str, feeds, host) -> EdgeGraph:
    return EdgeGraph(build, what, reference, _frame_cases(feeds, host), feeds, host)


_TORCH, _PILLOW = "(NumPy, torch's bilinear formulas)", "(NumPy, Pillow's integer arithmetic)"
EDGE_GRAPHS: Dict[str, EdgeGraph] = {
    "image-predictor": _frame_graph(
        preprocess_graph, "a uint8 frame -> the model input (sam2's image predictor)",
        f"runtime.sam2.inputs.image_to_model_input {_TORCH}",
        preprocess_feeds, lambda f, s: image_to_model_input(rgb_to_float(f), s)),
    "video-loader": _frame_graph(
        pil_preprocess_graph, "a uint8 frame -> the model input (sam2's video loader)",
        f"runtime.sam2.inputs.video_frame_to_model_input {_PILLOW}",
        video_preprocess_feeds, video_frame_to_model_input),
    "pillow-bilinear": _frame_graph(
        pil_preprocess_graph, "a uint8 frame -> the model input (Pillow's bilinear, as the authors)",
        f"runtime.core.edges.pil_model_input, bilinear {_PILLOW}",
        lambda f, s: pil_preprocess_feeds(f, s, "bilinear"), lambda f, s: pil_model_input(f, s, "bilinear")),
    "logits": EdgeGraph(
        postprocess_graph, "low-res logits -> frame-size logits and masks",
        f"runtime.core.resize.resize_bilinear, then > threshold {_TORCH}", _postprocess_cases),
}
# The graph kind of each SAM2 edge stage.
SAM2_EDGE_GRAPHS = {PREPROCESS: "image-predictor", VIDEO_PREPROCESS: "video-loader", POSTPROCESS: "logits"}


def check_edge(spec: StageSpec, model: bytes, graph: str, seed: int = 0) -> Dict[str, object]:
    """The ``graph`` kind's (:data:`EDGE_GRAPHS`) ONNX ``model`` of ``spec`` in ONNX Runtime vs its
    NumPy reference on random inputs at :func:`parity_frames` sizes: worst figures, the FP32 gate
    (and for masks: IoU, and the masks exactly the logits' threshold), ``passed``."""
    import onnxruntime as ort

    kind = EDGE_GRAPHS[graph]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    cases = kind.cases(spec, sess.run, np.random.default_rng(seed))
    figures = worst(cases)
    passed = not EDGE_PARITY.failures(figures)
    if graph == "logits":
        figures["mask_iou"] = min(c["mask_iou"] for c in cases)
        passed = passed and all(c["mask_is_logits_above"] for c in cases) and figures["mask_iou"] >= 1 - 1e-4
    return {**figures, "gate": EDGE_PARITY.as_dict(), "passed": passed, "reference": kind.reference, "cases": cases}


def export_edge(spec: StageSpec, graph: str, folder: Path, previous: Optional[StageRecord],
                log: Callable[[str], None]) -> StageRecord:
    """Write ``folder/<edge stage>.onnx``, a ``graph`` kind (:data:`EDGE_GRAPHS`), atomically and
    verified; its stage record (FP32 only). ``previous`` (the record of an earlier build) is
    reused while the file on disk is this graph."""
    path = Path(folder) / onnx_name(spec.name)
    kind = EDGE_GRAPHS[graph]
    data = kind.build(spec).SerializeToString()
    prev = previous.files.get("fp32") if previous else None
    tag = f"[{spec.name}]"
    if (prev and previous.parity.get("passed") and path.is_file()
            and sha256_file(path) == prev.sha256 == hashlib.sha256(data).hexdigest()):
        log(f"{tag} up to date, reusing {path.name}")
        return StageRecord({"fp32": prev}, parity=previous.parity)
    parity = check_edge(spec, data, graph)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    lo, _, hi = spec.axis_ranges["frame_w"]
    log(f"{tag} {path.name}: frames {lo}..{hi} px per side, {kind.what}, on the backend; "
        f"rel L2 {parity['rel_l2']:.1e} vs the NumPy reference (gate {EDGE_PARITY.max_rel_l2:.0e}) "
        f"{'ok' if parity['passed'] else 'FAILED'}")
    return StageRecord({"fp32": FileRecord(path.name, sha256_file(path))}, parity=parity)
