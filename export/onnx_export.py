"""ONNX export of one sub-network, ``onnx.checker``, and parity against PyTorch.

Uses the TorchScript exporter (``dynamo=False``) at opset 17, which honours
the opset request for every stage (the dynamo exporter moves the encoder to
18; see platform-notes.md). Dynamic axes come from :mod:`runtime.spec`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import onnx
import torch

from runtime.fileio import atomic_path
from runtime.spec import StageSpec

OPSET = 17


def _dynamic_axes(spec: StageSpec) -> Dict[str, Dict[int, str]]:
    return {t.name: t.dynamic_axes for t in spec.inputs + spec.outputs if t.dynamic_axes}


def example_feeds(spec: StageSpec, axes: Mapping[str, int], seed: int = 0) -> Dict[str, np.ndarray]:
    """Random but meaningful inputs for ``spec`` with dynamic axes set by ``axes``.

    Point labels are drawn from {-1, 0, 1}, coordinates inside the image,
    ``has_mask_input`` is 1; everything else is standard normal (images uniform).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = t.concrete_shape(dict(axes))
        if t.name == "image":
            a = rng.random(shape)
        elif t.name == "point_coords":
            a = rng.random(shape) * spec.inputs[0].shape[-1] * 16  # 0..S
        elif t.name == "point_labels":
            a = rng.integers(-1, 2, size=shape)
        elif t.name == "has_mask_input":
            a = np.ones(shape)
        elif t.name == "mask_logits":
            a = rng.standard_normal(shape) * 10
        else:
            a = rng.standard_normal(shape)
        feeds[t.name] = np.ascontiguousarray(a, dtype=np.float32)
    return feeds


def export_onnx(net: torch.nn.Module, spec: StageSpec, path: str | Path,
                axes: Optional[Mapping[str, int]] = None, opset: int = OPSET,
                fold: bool = False) -> Path:
    """Trace ``net`` on example inputs and write a checked ONNX file atomically.

    ``fold``: replace the graph's input-independent subgraphs by their values
    before writing (:func:`export.ort_optimize.fold_constants`, exact: shape
    arithmetic, Hiera's position-embedding resize, attention scales).
    """
    path = Path(path)
    axes = dict(axes or {k: v[1] for k, v in spec.axis_ranges.items()})
    # Trace with non-trivial sizes so no dynamic axis is specialised to 1.
    trace_axes = {k: max(2, v) if k != "batch" else v for k, v in axes.items()}
    feeds = example_feeds(spec, trace_axes)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                net, args, str(tmp),
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_axes=_dynamic_axes(spec),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        if fold:
            from export.ort_optimize import fold_constants

            fold_constants(model)
            onnx.save(model, str(tmp))
        onnx.checker.check_model(model, full_check=True)
    return path


def ort_session(path: str | Path, threads: int = 0):
    """A CPU ONNX Runtime session with all graph optimisations enabled."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom else float(np.linalg.norm(a - b))


def compare_outputs(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """Per-output relative L2 and max abs error of ``got`` against ``ref``."""
    out = {}
    for name, r in ref.items():
        g = np.asarray(got[name])
        if g.shape != r.shape:
            raise AssertionError(f"output {name!r}: shape {g.shape} != reference {r.shape}")
        out[name] = {
            "rel_l2": relative_l2(g, r),
            "max_abs": float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0,
        }
    return out


@torch.no_grad()
def torch_outputs(net: torch.nn.Module, spec: StageSpec, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    outs = net(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {n: o.numpy() for n, o in zip(spec.output_names, outs)}


def check_parity(net: torch.nn.Module, spec: StageSpec, onnx_path: str | Path,
                 axes_list, seed: int = 1, session=None) -> Dict[str, object]:
    """Run ONNX Runtime and PyTorch on fresh random inputs for each axes setting.

    Returns ``{"rel_l2": worst, "max_abs": worst, "cases": [...]}``.
    """
    session = session or ort_session(onnx_path)
    cases = []
    for i, axes in enumerate(axes_list):
        feeds = example_feeds(spec, axes, seed=seed + i)
        ref = torch_outputs(net, spec, feeds)
        got = dict(zip(spec.output_names, session.run(list(spec.output_names), feeds)))
        cases.append({"axes": dict(axes), "outputs": compare_outputs(got, ref)})
    worst_rel = max(o["rel_l2"] for c in cases for o in c["outputs"].values())
    worst_abs = max(o["max_abs"] for c in cases for o in c["outputs"].values())
    return {"rel_l2": worst_rel, "max_abs": worst_abs, "cases": cases}
