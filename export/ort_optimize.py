"""Optional ONNX graph post-processing for ONNX Runtime: fold constants, fuse attention.

Two passes (:data:`PASSES`, run by :func:`optimize_for_ort` and the CLI):

- ``fold`` (:func:`fold_constants`, exact, the default): replaces every
  input-independent subgraph by its value. The TorchScript exporter leaves
  ``Shape -> Gather -> ...`` chains in the graph wherever sam2 reads
  ``x.shape`` and the batch axis is dynamic, so ORT cannot fold them itself:
  Hiera's bicubic position-embedding ``Resize`` and every SDPA ``1/sqrt(d)``
  scale run on every call. ``export.build`` applies it to every SAM2 stage it
  exports (``--plain-export`` leaves it out, for before/after benchmarks).
- ``fuse`` (:func:`fuse_attention`): each ``MatMul -> Softmax -> MatMul``
  chain (with the SDPA scales and the key transpose) becomes one
  ``com.microsoft.MultiHeadAttention``, whose CPU kernel computes attention
  block-wise without the score matrix; outputs stay within relative L2 1e-5.
  Scores with a key bias (memory attention's cross-attention, whose padding
  is masked by ``[B,1,1,T]`` biases) become one more query / key feature
  (``q' = [q, 1]``, ``k' = [k, bias / scale]``): with a mask input the CPU
  kernel would keep the ``[B,S,T]`` scores. ``export.build`` writes the
  result as the ``cpu-fused`` variant of the image encoder and memory
  attention (:func:`export_cpu_fused`), which ONNX Runtime's CPU provider
  runs by default: at 1024 px it cut the process's peak RSS at 5 references
  by about half at no loss of speed (``bench/reports/frame-budget.md``).
  The FP32 files stay standard ONNX for TensorRT and the other providers.

The profiles these passes came from (per-op shares of each stage, the GEMM
rates against the matmul peak, the first fused-attention experiment) are in
``bench/reports/ort-graph-profiles.md``.

Usage::

    python -m export.ort_optimize engines/x/image_encoder.onnx out.onnx --stage image_encoder --verify
    python -m export.ort_optimize engines/x/memory_attention.onnx out.onnx --passes fold,fuse
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from runtime.errors import UsageError

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Producer / consumer maps over an ONNX graph (rebuilt after edits)."""

    def __init__(self, graph: onnx.GraphProto):
        self.g = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {i.name: i for i in graph.initializer}

    def const_value(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None


def _is_scalar_branch(g: _Graph, name: str, depth: int = 0) -> bool:
    """True when ``name`` is a scalar derived only from constants and shapes (the SDPA scale)."""
    if depth > 12:
        return False
    if g.const_value(name) is not None:
        return g.const_value(name).size == 1
    n = g.producer.get(name)
    if n is None:
        return False
    if n.op_type == "Shape":
        return True
    if n.op_type not in ("Gather", "Cast", "Sqrt", "Div", "Mul", "Slice", "Squeeze",
                         "Unsqueeze", "Reciprocal", "Identity"):
        return False
    return all(_is_scalar_branch(g, i, depth + 1) for i in n.input if i)


def _strip_scale(g: _Graph, name: str):
    """Follow ``Mul(x, scale)`` back to ``x``; returns (x, constant scale or None, mul node or None)."""
    n = g.producer.get(name)
    if n is not None and n.op_type == "Mul":
        for xi, si in ((0, 1), (1, 0)):
            if _is_scalar_branch(g, n.input[si]):
                c = g.const_value(n.input[si])
                return n.input[xi], (None if c is None else float(c.reshape(-1)[0])), n
    return name, 1.0, None


def _static_shape(vi_map, name) -> Optional[List[Optional[int]]]:
    vi = vi_map.get(name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


BHND_TO_BNHD = [0, 2, 1, 3]  # [B,H,N,d] <-> [B,N,H,d] (its own inverse): MultiHeadAttention flattens H*d


def _find_attention(g: _Graph):
    """Yield matches of ``MatMul(q*s, Transpose(k)*s) [+ key bias] -> Softmax(-1) -> MatMul(., v)``;
    ``bias`` is the added key bias (memory attention's padding mask) or None."""
    for sm in list(g.g.node):
        if sm.op_type != "Softmax":
            continue
        axis = next((helper.get_attribute_value(a) for a in sm.attribute if a.name == "axis"), -1)
        if axis not in (-1, 3):
            continue
        mm1 = g.producer.get(sm.input[0])
        cons = g.consumers.get(sm.output[0], [])
        bias = None
        if mm1 is not None and mm1.op_type == "Add":
            scores = [i for i in mm1.input if getattr(g.producer.get(i), "op_type", None) == "MatMul"]
            if len(scores) != 1 or len(g.consumers.get(mm1.output[0], [])) != 1:
                continue
            bias = next(i for i in mm1.input if i != scores[0])
            mm1 = g.producer[scores[0]]
        if mm1 is None or mm1.op_type != "MatMul" or len(cons) != 1:
            continue
        mm2 = cons[0]
        if mm2.op_type != "MatMul" or mm2.input[0] != sm.output[0]:
            continue
        if len(g.consumers.get(mm1.output[0], [])) != 1:
            continue
        q, sq, mq = _strip_scale(g, mm1.input[0])
        kt, sk, mk = _strip_scale(g, mm1.input[1])
        tr = g.producer.get(kt)
        perm = None if tr is None or tr.op_type != "Transpose" else next(
            (list(helper.get_attribute_value(a)) for a in tr.attribute if a.name == "perm"), None)
        # keys [B,H,T,d]: the transpose's input where it only swaps the last two axes (sam2's memory
        # attention); else the transposed keys [B,H,d,T] themselves (Hiera's attention)
        k, k_perm = (tr.input[0], BHND_TO_BNHD) if perm == [0, 1, 3, 2] else (kt, [0, 3, 1, 2])
        yield {"softmax": sm, "mm1": mm1, "mm2": mm2, "q": q, "k": k, "v": mm2.input[1],
               "perm": {"q": BHND_TO_BNHD, "k": k_perm, "v": BHND_TO_BNHD},
               "q_scale": sq, "k_scale": sk, "scaled": mq is not None or mk is not None, "bias": bias}


def _bias_as_feature(model: onnx.ModelProto, p: str, flat: Dict[str, str], bias: str, scale: float
                     ) -> List[onnx.NodeProto]:
    """A key bias ``[B,1,1,T]`` as one more feature of single-head queries and keys: ``q' = [q, 1]``,
    ``k' = [k, bias / scale]``, so ``scale * q'.k' = scale * q.k + bias`` and MultiHeadAttention
    needs no mask input (with one, ONNX Runtime's CPU kernel keeps the [B,S,T] scores; without,
    it attends block-wise). Rewires ``flat["q"]`` / ``flat["k"]`` to the widened tensors."""
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([0, -1, 1], np.int64), p + "/bias_shape"),
        numpy_helper.from_array(np.array([0], np.int64), p + "/zero"),
        numpy_helper.from_array(np.array([2], np.int64), p + "/two"),
        numpy_helper.from_array(np.array([1], np.int64), p + "/one"),
        numpy_helper.from_array(np.array(1.0 / scale, np.float32), p + "/inv_scale"),
    ])
    n = helper.make_node
    nodes = [
        n("Reshape", [bias, p + "/bias_shape"], [p + "/bias_bt1"], name=p + "/bias_bt1"),
        n("Mul", [p + "/bias_bt1", p + "/inv_scale"], [p + "/bias_feature"], name=p + "/bias_feature"),
        n("Concat", [flat["k"], p + "/bias_feature"], [p + "/k_wide"], axis=-1, name=p + "/k_wide"),
        n("Shape", [flat["q"]], [p + "/q_shape"], name=p + "/q_shape"),
        n("Slice", [p + "/q_shape", p + "/zero", p + "/two"], [p + "/q_bs"], name=p + "/q_bs"),
        n("Concat", [p + "/q_bs", p + "/one"], [p + "/ones_shape"], axis=0, name=p + "/ones_shape"),
        n("ConstantOfShape", [p + "/ones_shape"], [p + "/ones"], name=p + "/ones",
          value=numpy_helper.from_array(np.array([1.0], np.float32))),
        n("Concat", [flat["q"], p + "/ones"], [p + "/q_wide"], axis=-1, name=p + "/q_wide"),
    ]
    flat["q"], flat["k"] = p + "/q_wide", p + "/k_wide"
    return nodes


def _outer_refs(graph: onnx.GraphProto) -> List[str]:
    """Names a subgraph (``If`` branch, ``Loop`` body) reads from its enclosing scopes."""
    defined = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    refs = []
    for n in graph.node:
        refs += [i for i in _node_inputs(n) if i and i not in defined]
        defined.update(n.output)
    return refs


def _node_inputs(node: onnx.NodeProto) -> List[str]:
    """``node``'s inputs, including the outer-scope names its subgraphs read."""
    subs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    subs += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    return list(node.input) + [r for g in subs for r in _outer_refs(g)]


def _rename_inputs(node: onnx.NodeProto, renamed: Dict[str, str]) -> None:
    """Rename ``node``'s inputs (and those of its subgraphs' nodes) by ``renamed``."""
    for k, i in enumerate(node.input):
        node.input[k] = renamed.get(i, i)
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                _rename_inputs(n, renamed)


def _prune(graph: onnx.GraphProto) -> int:
    """Remove nodes and initializers no graph output depends on; returns nodes removed."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(graph.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in _node_inputs(n) if i)
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return removed


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's symbolic shape inference (follows the exporter's Shape/Reshape chains), else ONNX's."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:
        try:
            return onnx.shape_inference.infer_shapes(model)
        except Exception:
            return model


def fuse_attention(model: onnx.ModelProto) -> Dict[str, object]:
    """Rewrite every exported SDPA in ``model`` (in place) as ``com.microsoft.MultiHeadAttention``."""
    inferred = _infer_shapes(model)
    vi_map = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    g = _Graph(model.graph)
    matches = list(_find_attention(g))
    fused, skipped = [], []
    new_nodes: Dict[int, List[onnx.NodeProto]] = {}
    for i, m in enumerate(matches):
        qs = _static_shape(vi_map, m["q"])
        if not qs or len(qs) != 4 or qs[1] is None or qs[3] is None:
            skipped.append({"node": m["softmax"].name, "why": "query is not [B,H,N,d] with static H, d"})
            continue
        heads, d = int(qs[1]), int(qs[3])
        bs = _static_shape(vi_map, m["bias"]) if m["bias"] else None
        if m["bias"] and (heads != 1 or not bs or len(bs) != 4 or bs[1:3] != [1, 1]):
            skipped.append({"node": m["softmax"].name, "why": "a key bias other than [B,1,1,T] on one head"})
            continue
        if m["scaled"]:
            if m["q_scale"] is not None and m["k_scale"] is not None:
                scale = m["q_scale"] * m["k_scale"]
            else:  # the exporter's dynamic sqrt(1/sqrt(E)) on q and k: SDPA's default scale
                scale = 1.0 / math.sqrt(d)
        else:
            scale = 1.0
        p = f"/ort_fused_mha_{i}"
        shp3 = p + "/shape3"
        shp4 = p + "/shape4"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), shp3),
            numpy_helper.from_array(np.array([0, 0, heads, -1], np.int64), shp4),
        ])
        nodes = []
        flat = {}
        for role in ("q", "k", "v"):
            t = f"{p}/{role}_bsnh"
            nodes.append(helper.make_node("Transpose", [m[role]], [t], perm=m["perm"][role], name=t))  # [B,N,H,d]
            flat[role] = f"{p}/{role}_3d"
            nodes.append(helper.make_node("Reshape", [t, shp3], [flat[role]], name=flat[role]))
        if m["bias"]:
            nodes += _bias_as_feature(model, p, flat, m["bias"], scale)
        o3 = p + "/out_3d"
        nodes.append(helper.make_node("MultiHeadAttention", [flat["q"], flat["k"], flat["v"]], [o3],
                                      domain=MS_DOMAIN, num_heads=heads, scale=float(scale),
                                      name=p + "/MultiHeadAttention"))
        o4 = p + "/out_bsnh"
        nodes.append(helper.make_node("Reshape", [o3, shp4], [o4], name=o4))
        nodes.append(helper.make_node("Transpose", [o4], [m["mm2"].output[0]], perm=BHND_TO_BNHD,
                                      name=p + "/out_bhsd"))
        new_nodes[id(m["mm2"])] = nodes
        fused.append({"node": m["softmax"].name, "heads": heads, "head_dim": d, "scale": scale,
                      "key_bias": bool(m["bias"])})
    if new_nodes:
        out_nodes = []
        for n in model.graph.node:
            if id(n) in new_nodes:
                out_nodes.extend(new_nodes[id(n)])  # replaces the second MatMul
            else:
                out_nodes.append(n)
        del model.graph.node[:]
        model.graph.node.extend(out_nodes)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    removed = _prune(model.graph)
    return {"fused_attention": len(fused), "skipped": skipped, "nodes_removed": removed,
            "attention": fused}


# Ops never folded: random draws.
_NO_FOLD_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                "Multinomial", "Bernoulli"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _pick_dims(g: _Graph, node: onnx.NodeProto, dims: List[Optional[int]]) -> Optional[np.ndarray]:
    """The dims (None = dynamic) a constant ``Gather``/``Slice`` on axis 0 takes from a shape."""
    args = [g.const_value(i) if i else np.array([]) for i in node.input[1:]]
    if any(a is None for a in args):
        return None
    if node.op_type == "Gather" and _attr(node, "axis", 0) == 0:
        return np.asarray(np.array(dims, dtype=object)[args[0]], dtype=object)
    if node.op_type == "Slice" and len(args) >= 2:
        axes = args[2] if len(args) > 2 and args[2].size else np.zeros(1, np.int64)
        steps = args[3] if len(args) > 3 and args[3].size else np.ones(1, np.int64)
        if axes.size == 1 and int(axes[0]) in (0, -1):
            return np.array(dims[int(args[0][0]):int(args[1][0]):int(steps[0])], dtype=object)
    return None


def _static_shape_values(model: onnx.ModelProto, g: _Graph) -> Dict[str, np.ndarray]:
    """Values of ``Shape``, ``Gather(Shape)`` and ``Slice(Shape)`` outputs fixed by static dims.

    ``x [batch, 256, 256, 96]`` with a dynamic batch gives no constant
    ``Shape(x)``, but ``Gather(Shape(x), 1)`` is the constant 256. Dimensions
    come from ORT's symbolic shape inference.
    """
    inferred = _infer_shapes(model)
    vi_map = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    out: Dict[str, np.ndarray] = {}
    for n in g.g.node:
        dims = _static_shape(vi_map, n.input[0]) if n.op_type == "Shape" else None
        if dims is None:
            continue
        dims = dims[_attr(n, "start", 0):_attr(n, "end")]
        if None not in dims:
            out[n.output[0]] = np.array(dims, np.int64)
            continue
        for c in g.consumers.get(n.output[0], []):
            picked = _pick_dims(g, c, dims) if c.input[0] == n.output[0] else None
            if picked is not None and None not in picked.reshape(-1).tolist():
                out[c.output[0]] = picked.astype(np.int64)
    return out


def _constant_nodes(g: _Graph, known: Dict[str, np.ndarray]):
    """Nodes (in graph order) whose inputs are all constant (initializers,
    ``Constant`` outputs, ``known`` shape values or outputs of such nodes), and
    the aliases ``{output: source}`` of ``Identity`` nodes on constants (the
    exporter's copies of shared weights: renamed, never duplicated)."""
    const = set(g.inits) | set(known)
    nodes, alias = [], {}
    for n in g.g.node:
        if n.op_type == "Constant":
            const.update(n.output)
        elif n.op_type == "Identity" and n.input[0] in const:
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])
            const.add(n.output[0])
        elif (n.op_type not in _NO_FOLD_OPS and not set(n.output) & set(known)
              and all(not i or i in const for i in _node_inputs(n))):
            nodes.append(n)
            const.update(n.output)
    return nodes, alias


def _evaluate(model: onnx.ModelProto, nodes: List[onnx.NodeProto], alias: Dict[str, str],
              known: Dict[str, np.ndarray], names: List[str]) -> Dict[str, np.ndarray]:
    """Run ``nodes`` (no graph inputs) in ONNX Runtime with optimisations off; values of ``names``."""
    import onnxruntime as ort

    consts = [n for n in model.graph.node if n.op_type == "Constant"]
    copies = [helper.make_node("Identity", [src], [out]) for out, src in alias.items()]
    used = {i for n in nodes + copies for i in _node_inputs(n)}
    inits = [i for i in model.graph.initializer if i.name in used]
    inits += [numpy_helper.from_array(v, k) for k, v in known.items() if k in used or k in names]
    graph = helper.make_graph(consts + copies + nodes, "fold", [],
                              [onnx.ValueInfoProto(name=n) for n in names], inits)
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {})))


def fold_constants(model: onnx.ModelProto, max_bytes: int = 64 << 20, rounds: int = 4
                   ) -> Dict[str, object]:
    """Replace every input-independent subgraph of ``model`` (in place) by its value.

    The TorchScript exporter keeps a computation in the graph whenever a
    dimension is read with ``x.shape`` and a dynamic axis (batch) makes
    ``Shape(x)`` non-constant, even when only static dimensions are used.
    In SAM2 that is Hiera's bicubic position embedding (a ``Resize`` of a
    ``[1,96,7,7]`` parameter to ``[1,96,256,256]`` at 1024 px, ~8% of the
    image encoder's time in ONNX Runtime) and every ``1/sqrt(d)`` attention
    scale (which, once constant, ORT fuses into the ``MatMul``). Values are
    computed once with ONNX Runtime's own kernels, so the graph computes the
    same numbers; constants above ``max_bytes`` stay computed at run time.
    Repeats (up to ``rounds``) while a round folds something: shapes behind a
    folded ``Resize`` only become static after it.

    Returns ``{"folded": n, "folded_bytes": b, "skipped_large": [...], "nodes_removed": r}``.
    """
    total = {"folded": 0, "folded_bytes": 0, "skipped_large": [], "nodes_removed": 0, "rounds": 0}
    for _ in range(rounds):
        r = _fold_round(model, max_bytes)
        total["rounds"] += 1
        for k in ("folded", "folded_bytes", "nodes_removed"):
            total[k] += r[k]
        total["skipped_large"] = r["skipped_large"]
        if not r["folded"]:
            break
    return total


def _fold_round(model: onnx.ModelProto, max_bytes: int) -> Dict[str, object]:
    """One pass of :func:`fold_constants`."""
    g = _Graph(model.graph)
    known = _static_shape_values(model, g)
    nodes, alias = _constant_nodes(g, known)
    inner = {id(n) for n in nodes} | {id(n) for n in model.graph.node
                                      if n.op_type == "Constant" or n.output[0] in alias}
    computed = {o for n in nodes for o in n.output} | set(known)
    outputs = {o.name for o in model.graph.output}
    consumed = {i for n in model.graph.node if id(n) not in inner for i in _node_inputs(n)} - outputs
    consumed |= {alias[i] for i in consumed if i in alias}
    frontier = sorted(consumed & computed)
    values = _evaluate(model, nodes, alias, known, frontier) if frontier else {}
    renamed = {}
    skipped, size = [], 0
    for name, v in values.items():
        if v.nbytes > max_bytes:
            skipped.append({"tensor": name, "bytes": int(v.nbytes)})
            continue
        renamed[name] = f"{name}__folded"
        model.graph.initializer.append(numpy_helper.from_array(v, renamed[name]))
        size += int(v.nbytes)
    renamed.update({k: renamed.get(v, v) for k, v in alias.items() if k in consumed})
    for n in model.graph.node:
        if id(n) not in inner:
            _rename_inputs(n, renamed)
    return {"folded": len(values) - len(skipped), "folded_bytes": size, "skipped_large": skipped,
            "nodes_removed": _prune(model.graph)}


PASSES = {"fold": fold_constants, "fuse": fuse_attention}
CPU_FUSED_STAGES = ("image_encoder", "memory_attention")  # the stages with attention worth fusing


class _GateFailed(Exception):
    """The fused file missed its gate: it is not put under its name."""


def export_cpu_fused(folder, stage: str, cases: Sequence[Dict[str, int]], previous=None,
                     log=print) -> Optional[dict]:
    """Write ``<stage>.cpu-fused.onnx`` (atomically) beside the stage's FP32 file: the same graph with
    every attention fused (:func:`fuse_attention`), for ONNX Runtime's CPU provider, where it
    attends block-wise instead of holding the score matrices (``bench/reports/frame-budget.md``).

    Verified against the FP32 file on ``cases`` (axis settings; several objects with padding)
    at :data:`runtime.core.compare.FP32_PARITY`. Records the file as the stage's ``cpu-fused``
    variant with its figures in ``measured["cpu-fused"]`` and returns those; None where nothing
    fused or the gate failed (then the FP32 file serves the CPU). ``previous``: the stage's record
    of an earlier build, reused while both files are unchanged.
    """
    from runtime.core.compare import FP32_PARITY
    from runtime.core.fileio import atomic_path, sha256_file
    from runtime.core.folder import FileRecord, onnx_name

    rec = folder.manifest.stages[stage]
    src = folder.path / rec.files["fp32"].file
    path = folder.path / onnx_name(stage, "cpu-fused")
    old = previous.files.get("cpu-fused") if previous else None
    if (old and previous.files["fp32"].sha256 == rec.files["fp32"].sha256 and path.is_file()
            and sha256_file(path) == old.sha256 and previous.measured.get("cpu-fused")):
        rec.files["cpu-fused"], rec.measured["cpu-fused"] = old, previous.measured["cpu-fused"]
        log(f"[cpu-fused] {stage}: up to date, reusing {path.name}")
        return rec.measured["cpu-fused"]
    model = onnx.load(os.fspath(src))
    report = fuse_attention(model)
    if not report["fused_attention"]:
        log(f"[cpu-fused] {stage}: no attention to fuse; the FP32 file serves ONNX Runtime's CPU provider")
        path.unlink(missing_ok=True)
        return None
    figures = {"gate": FP32_PARITY.as_dict(), "fused_attention": report["fused_attention"],
               "key_bias": sum(a["key_bias"] for a in report["attention"]), "cases": list(cases)}
    try:
        with atomic_path(path) as tmp:  # under its name only once verified
            onnx.save(model, os.fspath(tmp))
            figures["rel_l2"] = max(verify(src, tmp, stage, axes) for axes in cases)
            figures["passed"] = figures["rel_l2"] <= FP32_PARITY.max_rel_l2
            if not figures["passed"]:
                raise _GateFailed
    except _GateFailed:
        pass
    ok = "ok" if figures["passed"] else "FAILED: the FP32 file serves ONNX Runtime's CPU provider"
    log(f"[cpu-fused] {stage}: {report['fused_attention']} attention blocks fused for ONNX Runtime's CPU "
        f"provider, rel L2 {figures['rel_l2']:.1e} vs the FP32 file (gate {FP32_PARITY.max_rel_l2:.0e}) {ok}")
    if not figures["passed"]:
        path.unlink(missing_ok=True)  # an earlier build's file, for another FP32 graph
        return None
    rec.files["cpu-fused"] = FileRecord(path.name, sha256_file(path))
    rec.measured["cpu-fused"] = figures
    return figures


def optimize_for_ort(onnx_path: str | os.PathLike, out_path: str | os.PathLike, stage: str,
                     passes: Sequence[str] = ("fold",)) -> dict:
    """Write an optimised copy of ``onnx_path`` to ``out_path`` (atomically).

    ``stage`` names the sub-network (``runtime.sam2.spec.STAGES``); ``passes`` run
    in order, from :data:`PASSES`: ``fold`` (:func:`fold_constants`, exact)
    and ``fuse`` (:func:`fuse_attention`, within rel. L2 1e-5).
    Returns ``stage``, ``nodes_before``/``nodes_after``, ``source``,
    ``output`` and each pass's own report under its name.
    """
    from runtime.core.fileio import atomic_path
    from runtime.sam2.spec import STAGES

    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    unknown = [p for p in passes if p not in PASSES]
    if unknown or not passes:
        raise UsageError(f"unknown passes {unknown or list(passes)}; choose from {list(PASSES)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path} does not exist")
    model = onnx.load(os.fspath(onnx_path))
    report = {"stage": stage, "nodes_before": len(model.graph.node),
              "source": str(onnx_path), "output": str(out_path)}
    for name in passes:
        report[name] = PASSES[name](model)
    report["nodes_after"] = len(model.graph.node)
    with atomic_path(out_path) as tmp:
        onnx.save(model, os.fspath(tmp))
    return report


def verify(original: str | os.PathLike, optimized: str | os.PathLike, stage: str,
           axes: Optional[Dict[str, int]] = None, seed: int = 3, threads: int = 0) -> float:
    """Relative L2 (worst output) of ``optimized`` against ``original`` in ORT CPU on random feeds."""
    import onnxruntime as ort

    from runtime.core.compare import rel_l2
    from runtime.core.spec import example_feeds
    from runtime.sam2.spec import stage_specs

    def ort_session(path, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])

    s0 = ort_session(original, threads)
    side = s0.get_inputs()[0].shape[-1]
    size = int(side) * (1 if stage == "image_encoder" else 16)  # others start with vision_feat
    spec = stage_specs(size)[stage]
    axes = {**{k: v[1] for k, v in spec.axis_ranges.items()}, **(axes or {})}
    feeds = example_feeds(spec, axes, seed)
    for valid in ("mem_valid", "ptr_valid"):  # several objects: the first one's last entry is padding
        if valid in feeds and feeds[valid].shape[0] > 1 and feeds[valid].shape[1] > 1:
            feeds[valid][0, -1] = 0.0
    s1 = ort_session(optimized, threads)
    names = list(spec.output_names)
    a = s0.run(names, feeds)
    b = s1.run(names, feeds)
    return max(rel_l2(y, x) for x, y in zip(a, b))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.ort_optimize", description=__doc__.split("\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--stage", default="memory_attention")
    ap.add_argument("--passes", default="fold", help=f"comma separated, in order: {', '.join(PASSES)}")
    ap.add_argument("--verify", action="store_true", help="compare outputs with the original in ORT")
    ap.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    args = ap.parse_args(argv)
    from runtime.cli.common import run_main

    return run_main(lambda: _optimize(args), debug=args.debug)


def _optimize(args) -> int:
    rep = optimize_for_ort(args.onnx, args.out, args.stage, args.passes.split(","))
    done = []
    if "fold" in rep:
        done.append(f"folded {rep['fold']['folded']} constant tensors "
                    f"({rep['fold']['folded_bytes'] / 2 ** 20:.1f} MiB)")
    if "fuse" in rep:
        done.append(f"fused {rep['fuse']['fused_attention']} attention blocks")
    print(f"{args.stage}: {', '.join(done)}, {rep['nodes_before']} -> {rep['nodes_after']} nodes "
          f"-> {args.out}")
    if args.verify:
        print(f"rel L2 vs original: {verify(args.onnx, args.out, args.stage):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
