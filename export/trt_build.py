"""Build TensorRT engines from the exported ONNX files, in small composable steps.

The steps follow Polygraphy's ``network from ONNX -> config -> engine -> save``
chain, as plain functions that take the ``tensorrt`` module explicitly (so each
is testable with a fake module):

1. :func:`create_network` + :func:`parse_onnx`: explicit-batch network from the
   ONNX file; parser errors are reported with node index, name and operator.
2. :func:`profile_shapes` (pure) + :func:`add_profile`: one optimisation
   profile whose ``(min, opt, max)`` shapes come from the stage spec's
   ``axis_ranges``: e.g. memory attention ``mem_feats`` ``(1|7|7, 64, 64, 64)``
   at 1024 px with ``num_mem`` = (1, 7, 7).
3. :func:`mark_fp32_layers`: in FP16/INT8 builds, normalisation layers (and
   optionally softmax) are pinned to FP32: LayerNorm in Hiera/ViT encoders
   overflows in FP16 (docs/platform-notes.md). Handled are TensorRT's
   ``INormalizationLayer`` (ONNX opset >= 17 ``LayerNormalization``) and the
   decomposed pattern (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div).
4. :func:`configure`: precision flags (FP16; INT8 only for explicit
   quantization, i.e. Q/DQ nodes in the ONNX, with FP16 fallback), workspace,
   precision constraints, TF32, and the timing cache.
5. :func:`build_engine`: all of the above, ``build_serialized_network``, an
   atomic write of the engine and the timing cache, and the record that goes
   into the manifest (checked by the runtime at load time).

Target: TensorRT 8.6 .. 10.x. ``tensorrt`` is imported lazily; without it,
:func:`build_engine` raises :class:`~runtime.core.backends.base.BackendUnavailable`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from runtime.core.backends import cuda
from runtime.errors import BackendUnavailable, Sam2EdgeError
from runtime.core.backends.tensorrt import load_tensorrt, major_version, trt_logger
from runtime.core.fileio import sha256_file, write_bytes_atomic
from runtime.core.spec import StageSpec

PRECISIONS = ("fp32", "fp16", "int8")
Shape = Tuple[int, ...]
ShapeRange = Tuple[Shape, Shape, Shape]


class EngineBuildError(Sam2EdgeError):
    """TensorRT failed to build an engine (details are in TensorRT's log)."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected the model."""


def tensorrt_status() -> Tuple[bool, str]:
    """``(True, "TensorRT x on GPU")`` when engines can be built here, else ``(False, reason)``."""
    try:
        trt = load_tensorrt()
    except BackendUnavailable as e:
        return False, str(e)
    ok, why = cuda.device_status()
    if not ok:
        return False, f"TensorRT {trt.__version__} is installed but {why}"
    return True, f"TensorRT {trt.__version__} on {why}"


# 1. network --------------------------------------------------------------------------
def create_network(trt: Any, logger: Any) -> Tuple[Any, Any]:
    """``(builder, network)``: an explicit-batch, weakly typed network.

    TensorRT 8.x needs the ``EXPLICIT_BATCH`` flag; 10.x is always explicit
    batch and deprecates the flag, so it is only set before 10.
    """
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and major_version(trt.__version__) < 10:
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    if network is None:
        raise EngineBuildError("TensorRT could not create a network definition")
    return builder, network


def _parser_error_text(err: Any) -> str:
    parts = [f"{err.code()}: {err.desc()}"]
    node = err.node()
    if node is not None and int(node) >= 0:
        where = f"node #{node}"
        for attr, fmt in (("node_name", " {!r}"), ("node_operator", " ({})")):
            getter = getattr(err, attr, None)  # TensorRT >= 8.6 / 10
            value = getter() if callable(getter) else None
            if value:
                where += fmt.format(value)
        parts.append(where)
    try:
        parts.append(f"[{err.file()}:{err.line()} {err.func()}]")
    except Exception:
        pass
    return " ".join(parts)


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: str | Path) -> Any:
    """Parse ``onnx_path`` into ``network``; return the parser (keep it alive until the build).

    ``parse_from_file`` resolves external weight files next to the model.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {str(onnx_path)!r} not found; export it first")
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok or errors:
        detail = "\n  ".join(errors) or "no detail from the parser"
        raise OnnxParseError(f"TensorRT could not parse {str(onnx_path)!r}:\n  {detail}")
    return parser


# 2. profiles -----------------------------------------------------------------------
def profile_shapes(spec: StageSpec, input_names: Optional[Iterable[str]] = None) -> Dict[str, ShapeRange]:
    """``{input: (min, opt, max)}`` for the spec's inputs with dynamic axes.

    Each dynamic axis takes its ``(min, opt, max)`` from ``spec.axis_ranges``;
    fixed dims stay. ``input_names`` restricts the result (default: all).
    """
    wanted = set(spec.input_names if input_names is None else input_names)
    shapes: Dict[str, ShapeRange] = {}
    for t in spec.inputs:
        if t.name not in wanted or not t.dynamic_axes:
            continue
        missing = [a for a in t.dynamic_axes.values() if a not in spec.axis_ranges]
        if missing:
            raise ValueError(f"stage {spec.name!r}: no range for dynamic axes {missing} of {t.name!r}")
        shapes[t.name] = tuple(
            t.concrete_shape({a: r[k] for a, r in spec.axis_ranges.items()}) for k in range(3)
        )
    return shapes


def _network_inputs(network: Any) -> Dict[str, Shape]:
    return {
        network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape)
        for i in range(network.num_inputs)
    }


def check_network_inputs(network_inputs: Dict[str, Shape], spec: StageSpec) -> List[str]:
    """Names of the network inputs that need a profile; raise if ONNX and spec disagree."""
    problems, dynamic = [], []
    missing = [n for n in spec.input_names if n not in network_inputs]
    extra = [n for n in network_inputs if n not in spec.input_names]
    if missing or extra:
        problems.append(f"inputs missing from the ONNX {missing}, not in the spec {extra}")
    for name, shape in network_inputs.items():
        if name not in spec.input_names:
            continue
        want = spec.input(name).shape
        if len(shape) != len(want):
            problems.append(f"{name!r}: ONNX rank {len(shape)}, spec {want}")
            continue
        for i, (got, w) in enumerate(zip(shape, want)):  # got < 0: dynamic in the ONNX
            if got >= 0 and isinstance(w, int) and got != w:
                problems.append(f"{name!r} axis {i}: ONNX has {got}, spec {w}")
            elif got >= 0 and isinstance(w, str):
                problems.append(f"{name!r} axis {i}: spec axis {w!r} is dynamic, ONNX fixes it to {got}")
        if any(d < 0 for d in shape):
            dynamic.append(name)
    if problems:
        raise ValueError(
            f"the ONNX inputs of stage {spec.name!r} do not match its spec: " + "; ".join(problems)
            + "; re-export the ONNX with this version of export/"
        )
    return dynamic


def add_profile(trt: Any, builder: Any, config: Any, network: Any, spec: StageSpec) -> List[Dict]:
    """Add one optimisation profile from the spec; return it as a manifest record.

    The record is ``[{input: {"min": [...], "opt": [...], "max": [...]}}]``
    (a list: one entry per profile, so buckets can be added later); empty
    when the network has no dynamic input.
    """
    dynamic = check_network_inputs(_network_inputs(network), spec)
    if not dynamic:
        return []
    ranged = profile_shapes(spec, dynamic)
    shapes: Dict[str, ShapeRange] = {}
    for name in dynamic:
        if name in ranged:
            shapes[name] = ranged[name]
        else:  # the spec fixes every axis but the ONNX left one open: min = opt = max
            fixed = spec.input(name).concrete_shape({})
            shapes[name] = (fixed, fixed, fixed)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimisation profile {shapes}")
    return [{n: {"min": list(r[0]), "opt": list(r[1]), "max": list(r[2])} for n, r in shapes.items()}]


# 3. precision ------------------------------------------------------------------------
def _as(trt: Any, layer: Any, class_name: str) -> Any:
    """Downcast a generic ``ILayer`` so that type-specific attributes (``op``) are visible.

    ``network.get_layer`` returns the base class; Polygraphy downcasts the same way.
    """
    cls = getattr(trt, class_name, None)
    if cls is not None and not isinstance(layer, cls):
        try:
            layer.__class__ = cls
        except TypeError:
            pass
    return layer


def _float_outputs(trt: Any, layer: Any) -> bool:
    floats = {trt.float32, trt.float16}
    return layer.num_outputs > 0 and all(
        layer.get_output(k).dtype in floats for k in range(layer.num_outputs)
    )


def mark_fp32_layers(trt: Any, network: Any, *, norm: bool = True, softmax: bool = False) -> List[str]:
    """Pin normalisation layers (and optionally softmax) to FP32; return their names.

    Marked if ``norm``: ``NORMALIZATION`` layers; float ``REDUCE`` layers,
    ``POW``, ``SQRT`` and the elementwise layers fed directly by a reduce or
    sqrt (the ``x - mean``, ``var + eps`` and ``/ sqrt`` of a decomposed
    LayerNorm). Marked if ``softmax``: ``SOFTMAX`` layers. The affine ``* gamma + beta`` stays in FP16.
    Layers with non-float outputs (shape arithmetic) are never touched.
    Effective only with the OBEY/PREFER_PRECISION_CONSTRAINTS flag (see :func:`configure`).
    """
    LT = trt.LayerType
    seeds = set()  # names of tensors produced by marked reduce/sqrt layers
    marked: List[str] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not _float_outputs(trt, layer):
            continue
        kind, seed = layer.type, False
        if kind == LT.SOFTMAX:
            take = softmax
        elif not norm:
            take = False
        elif kind == LT.NORMALIZATION:
            take = True
        elif kind == LT.REDUCE:
            take = seed = True
        elif kind == LT.UNARY:
            take = seed = _as(trt, layer, "IUnaryLayer").op == trt.UnaryOperation.SQRT
        elif kind == LT.ELEMENTWISE:
            inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
            take = _as(trt, layer, "IElementWiseLayer").op == trt.ElementWiseOperation.POW or any(
                t is not None and t.name in seeds for t in inputs
            )
        else:
            take = False
        if not take:
            continue
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
            if seed:
                seeds.add(layer.get_output(k).name)
        if kind == LT.NORMALIZATION:  # its own knob (TensorRT >= 8.6); harmless if absent
            try:
                _as(trt, layer, "INormalizationLayer").compute_precision = trt.float32
            except AttributeError:
                pass
        marked.append(layer.name)
    return marked


def network_has_qdq(trt: Any, network: Any) -> bool:
    """True when the network holds Quantize/Dequantize layers (explicit quantization)."""
    qdq = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


# 4. config + timing cache -------------------------------------------------------------
def load_timing_cache(config: Any, path: Optional[Path], log: Callable[[str], None]) -> None:
    """Give ``config`` the cache stored at ``path`` (or an empty one) to fill during the build.

    A cache from another TensorRT version or GPU is refused (``ignore_mismatch``
    False) and replaced by an empty one, with a message.
    """
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # a corrupt file: TensorRT may raise instead of returning None
            cache = None
        if cache is None or not config.set_timing_cache(cache, False):
            log(f"timing cache {str(path)!r} is unreadable or from another TensorRT/GPU; "
                "starting a new one")
            cache = None
    if cache is None:
        config.set_timing_cache(config.create_timing_cache(b""), False)


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the config's (grown) timing cache to ``path`` atomically."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    write_bytes_atomic(path, cache.serialize())


def configure(trt: Any, builder: Any, network: Any, spec: StageSpec, precision: str, *,
              keep_norm_fp32: bool = True, keep_softmax_fp32: bool = False,
              constraints: str = "prefer", tf32: bool = True, workspace_gib: float = 4.0,
              timing_cache: Optional[Path] = None, log: Callable[[str], None] = print
              ) -> Tuple[Any, Dict[str, Any]]:
    """Builder config for ``precision``; returns ``(config, record)``.

    ``constraints`` ("prefer" or "obey") is how strictly TensorRT must honour
    the FP32 pins: "obey" fails the build if a pinned layer has no FP32 kernel,
    "prefer" falls back with a warning. ``tf32=False`` keeps FP32 builds
    bit-faithful (a reference for accuracy checks).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if constraints not in ("prefer", "obey"):
        raise ValueError(f"constraints must be 'prefer' or 'obey', got {constraints!r}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    qdq = network_has_qdq(trt, network)
    if precision == "int8":
        if not qdq:
            raise ValueError(
                f"int8 requested for {spec.name!r} but its ONNX has no QuantizeLinear/"
                "DequantizeLinear nodes; quantize it first (explicit Q/DQ: implicit "
                "calibration is deprecated since TensorRT 10.1 and not supported here)"
            )
        config.set_flag(trt.BuilderFlag.INT8)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    pinned: List[str] = []
    if precision != "fp32" and (keep_norm_fp32 or keep_softmax_fp32):
        pinned = mark_fp32_layers(trt, network, norm=keep_norm_fp32, softmax=keep_softmax_fp32)
        if pinned:
            flag = "OBEY_PRECISION_CONSTRAINTS" if constraints == "obey" else "PREFER_PRECISION_CONSTRAINTS"
            config.set_flag(getattr(trt.BuilderFlag, flag))
        log(f"{spec.name}: {len(pinned)} layers pinned to FP32 ({constraints})")
    profiles = add_profile(trt, builder, config, network, spec)
    load_timing_cache(config, timing_cache, log)
    record = {
        "precision": precision,
        "explicit_quantization": qdq,
        "keep_norm_fp32": keep_norm_fp32 and precision != "fp32",
        "keep_softmax_fp32": keep_softmax_fp32 and precision != "fp32",
        "fp32_layers": len(pinned),
        "precision_constraints": constraints if pinned else None,
        "tf32": tf32,
        "workspace_gib": workspace_gib,
        "profiles": profiles,
    }
    return config, record


# 5. build ------------------------------------------------------------------------
def build_engine(onnx_path: str | Path, engine_path: str | Path, spec: StageSpec, precision: str,
                 *, keep_norm_fp32: bool = True, timing_cache: Optional[Path] = None,
                 workspace_gib: float = 4.0, log: Callable[[str], None] = print,
                 keep_softmax_fp32: bool = False, constraints: str = "prefer",
                 tf32: bool = True) -> Dict[str, Any]:
    """Build ``onnx_path`` into a serialized engine at ``engine_path`` (atomic write).

    Returns the manifest record: ``file``, ``precision``, ``tensorrt_version``,
    ``gpu`` ({name, compute_capability}), ``keep_norm_fp32``, ``profiles``,
    ``build_seconds``, ``sha256``, ``bytes`` and the other build options.
    Raises ``BackendUnavailable`` without TensorRT or a GPU, ``OnnxParseError``,
    ``ValueError`` for ONNX/spec mismatches, ``EngineBuildError`` when
    TensorRT's build fails. On any error no (partial) engine file is left.
    """
    trt = load_tensorrt()
    cuda.require_device()
    engine_path = Path(engine_path)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    logger = trt_logger(trt)
    builder, network = create_network(trt, logger)
    parser = parse_onnx(trt, network, logger, onnx_path)
    config, record = configure(
        trt, builder, network, spec, precision, keep_norm_fp32=keep_norm_fp32,
        keep_softmax_fp32=keep_softmax_fp32, constraints=constraints, tf32=tf32,
        workspace_gib=workspace_gib, timing_cache=timing_cache, log=log,
    )
    log(f"{spec.name}: building {precision} engine with TensorRT {trt.__version__} ...")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    del parser  # the parser owns the ONNX weights until the build is done
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build an engine for {spec.name!r} from {str(onnx_path)!r} "
            "(see TensorRT's log above)"
        )
    write_bytes_atomic(engine_path, serialized)
    if timing_cache is not None:
        save_timing_cache(config, timing_cache)
    log(f"{spec.name}: wrote {engine_path.name} in {seconds:.1f} s")
    return {
        "file": engine_path.name,
        "tensorrt_version": trt.__version__,
        "gpu": cuda.gpu_record(),
        **record,
        "build_seconds": round(seconds, 3),
        "sha256": sha256_file(engine_path),
        "bytes": engine_path.stat().st_size,
    }
