"""ONNX export of one sub-network, ``onnx.checker``, and parity against PyTorch.

Uses the TorchScript exporter (``dynamo=False``) at opset 17, which honours
the opset request for every stage (the dynamo exporter moves the encoder to
18; see docs/platform-notes.md). Dynamic axes come from :mod:`runtime.sam2.spec`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import onnx
import torch

from runtime.core.compare import FP32_PARITY, compare_outputs, worst
from runtime.core.fileio import atomic_path, sha256_file
from runtime.core.folder import FileRecord, StageRecord, onnx_name
from runtime.core.spec import StageSpec, example_feeds

OPSET = 17


def _dynamic_axes(spec: StageSpec) -> Dict[str, Dict[int, str]]:
    return {t.name: t.dynamic_axes for t in spec.inputs + spec.outputs if t.dynamic_axes}


def export_onnx(net: torch.nn.Module, spec: StageSpec, path: str | Path,
                axes: Optional[Mapping[str, int]] = None, opset: int = OPSET,
                fold: bool = False) -> Path:
    """Trace ``net`` on example inputs and write a checked ONNX file atomically.

    ``axes``: the dynamic axes' values to trace at (default: the ranges' opt
    values, at least 2 except for the batch). ``fold``: replace the graph's input-independent subgraphs by their values
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


@torch.no_grad()
def torch_outputs(net: torch.nn.Module, spec: StageSpec, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    outs = net(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {n: o.numpy() for n, o in zip(spec.output_names, outs)}


def check_parity(net: torch.nn.Module, spec: StageSpec, onnx_path: str | Path,
                 axes_list, seed: int = 1, session=None) -> Dict[str, object]:
    """Run ONNX Runtime and PyTorch on fresh random inputs for each axes setting.

    Returns the worst ``rel_l2``/``max_abs``/``cosine`` over cases and outputs,
    the gate (:data:`runtime.core.compare.FP32_PARITY`), ``passed``, and the
    per-case figures.
    """
    session = session or ort_session(onnx_path)
    cases = []
    for i, axes in enumerate(axes_list):
        feeds = example_feeds(spec, axes, seed=seed + i)
        ref = torch_outputs(net, spec, feeds)
        got = dict(zip(spec.output_names, session.run(list(spec.output_names), feeds)))
        cases.append({"axes": dict(axes), **compare_outputs(got, ref)})
    w = worst(o for c in cases for k, o in c.items() if k != "axes")
    return {**w, "gate": FP32_PARITY.as_dict(), "passed": not FP32_PARITY.failures(w), "cases": cases}


def export_stage(net: torch.nn.Module, spec: StageSpec, folder: Path, cases, previous: Optional[StageRecord],
                 fold: bool, log, step: str = "", axes: Optional[Mapping[str, int]] = None) -> StageRecord:
    """Export one stage to ``folder/<stage>.onnx`` and verify it; reuse ``previous`` if its file still matches.

    Returns the stage's record: the FP32 file and its parity to PyTorch.
    """
    path = Path(folder) / onnx_name(spec.name)
    prev = previous.files.get("fp32") if previous else None
    if prev and path.is_file() and sha256_file(path) == prev.sha256 and previous.parity:
        log(f"{step}{spec.name}: up to date, reusing {path.name}")
        return StageRecord({"fp32": prev}, parity=previous.parity)
    t = time.time()
    log(f"{step}{spec.name}: exporting ONNX (opset {OPSET}) ...")
    export_onnx(net, spec, path, axes=axes, fold=fold)
    log(f"{step}{spec.name}: exported in {time.time() - t:.1f}s; verifying in ONNX Runtime ...")
    parity = check_parity(net, spec, path, cases)
    log(f"{step}{spec.name}: rel L2 {parity['rel_l2']:.2e}, max abs {parity['max_abs']:.2e} "
        f"(gate {FP32_PARITY.max_rel_l2:.0e}) {'ok' if parity['passed'] else 'FAILED'}")
    return StageRecord({"fp32": FileRecord(path.name, sha256_file(path))}, parity=parity)
