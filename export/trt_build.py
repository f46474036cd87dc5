"""Build TensorRT engines from the exported ONNX files: strongly typed, in small steps.

An engine is exactly as precise as the ONNX file it is built from. TensorRT
11 builds strongly typed networks only (no FP16/INT8 builder flags, no
per-layer precision); 10.x has built them since 10.0, so one path serves
JetPack 6's TensorRT 10.3 and today's 11.x: the FP32 file gives an FP32
engine (TF32 allowed unless ``tf32=False``), the ``fp16`` file (FP16
tensors, FP32 where the converter kept them) an FP16 engine, the Q/DQ
``int8`` file an INT8 engine. No weak-typing API is used anywhere.

The steps take the ``tensorrt`` module explicitly (the conformance tests run
them against the real bindings of each supported version):

1. :func:`create_network`: a ``STRONGLY_TYPED`` network definition;
2. :func:`parse_onnx`: the ONNX file into it (parser errors with node and operator);
3. :func:`profile_shapes` (pure) + :func:`add_profiles`: one optimisation
   profile per entry of the stage spec's :attr:`~runtime.core.spec.StageSpec.profile_ranges`;
4. :func:`configure`: workspace, TF32, the timing cache, the profiles;
5. :func:`build_engine`: all of the above, ``build_serialized_network``, an
   atomic write of the engine and the timing cache, and the record that goes
   into the manifest (checked by the runtime at load time and before reuse).

Why not Polygraphy's loaders (``NetworkFromOnnxPath(strongly_typed=True)``,
``CreateConfig``, ``EngineFromNetwork``): the strongly typed path needs the
same dozen TensorRT members from 10.3 to 11.4, which the project checks
against the real bindings of each version in CI; Polygraphy would add a
dependency whose own calls into TensorRT could not be checked the same way.
For debugging a build by hand, ``polygraphy run stage.onnx --trt --onnxrt``
remains the tool to reach for (it is not a dependency of this project).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from runtime.core.backends import cuda
from runtime.core.backends.tensorrt import load_tensorrt, trt_logger
from runtime.core.fileio import sha256_file, write_bytes_atomic
from runtime.core.spec import AxisRange, StageSpec
from runtime.errors import BackendUnavailable, ModelFolderError, Sam2EdgeError

Shape = Tuple[int, ...]
ShapeRange = Tuple[Shape, Shape, Shape]
# TensorRT's DataType names for the dtypes a stage's tensors can have.
TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32", "uint8": "UINT8",
              "bool": "BOOL"}


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
def create_network(trt: Any, builder: Any) -> Any:
    """A strongly typed network definition (every tensor's type comes from the ONNX graph)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if network is None:
        raise EngineBuildError("TensorRT could not create a network definition")
    return network


def _parser_error_text(err: Any) -> str:
    parts = [f"{err.code()}: {err.desc()}"]
    node = err.node()
    if node is not None and int(node) >= 0:
        parts.append(f"node #{node} {err.node_name()!r} ({err.node_operator()})")
    parts.append(f"[{err.file()}:{err.line()} {err.func()}]")
    return " ".join(parts)


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: str | Path) -> Any:
    """Parse ``onnx_path`` into ``network``; return the parser (keep it alive until the build).

    ``parse_from_file`` resolves external weight files next to the model.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelFolderError(f"ONNX file {str(onnx_path)!r} not found; export it first")
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok or errors:
        detail = "\n  ".join(errors) or "no detail from the parser"
        raise OnnxParseError(f"TensorRT could not parse {str(onnx_path)!r}:\n  {detail}")
    return parser


# 2. profiles -----------------------------------------------------------------------
def profile_shapes(spec: StageSpec, ranges: Optional[Mapping[str, AxisRange]] = None,
                   input_names: Optional[Sequence[str]] = None) -> Dict[str, ShapeRange]:
    """``{input: (min, opt, max)}`` for the spec's inputs with dynamic axes.

    Each dynamic axis takes its ``(min, opt, max)`` from ``ranges`` (default:
    ``spec.axis_ranges``; an axis a bucket leaves out keeps its full range);
    fixed dims stay. ``input_names`` restricts the result (default: all).
    """
    ranges = {**spec.axis_ranges, **(ranges or {})}
    wanted = set(spec.input_names if input_names is None else input_names)
    shapes: Dict[str, ShapeRange] = {}
    for t in spec.inputs:
        if t.name not in wanted or not t.dynamic_axes:
            continue
        missing = [a for a in t.dynamic_axes.values() if a not in ranges]
        if missing:
            raise ValueError(f"stage {spec.name!r}: no range for dynamic axes {missing} of {t.name!r}")
        shapes[t.name] = tuple(t.concrete_shape({a: r[k] for a, r in ranges.items()}) for k in range(3))
    return shapes


def _network_inputs(trt: Any, network: Any) -> Dict[str, Tuple[Shape, Any]]:
    out = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        out[t.name] = (tuple(int(d) for d in t.shape), t.dtype)
    return out


def check_network_inputs(trt: Any, network_inputs: Mapping[str, Tuple[Shape, Any]], spec: StageSpec) -> List[str]:
    """Names of the network inputs that need a profile; raise if ONNX and spec disagree (names, dtypes, dims)."""
    problems, dynamic = [], []
    missing = [n for n in spec.input_names if n not in network_inputs]
    extra = [n for n in network_inputs if n not in spec.input_names]
    if missing or extra:
        problems.append(f"inputs missing from the ONNX {missing}, not in the spec {extra}")
    for name, (shape, dtype) in network_inputs.items():
        if name not in spec.input_names:
            continue
        t = spec.input(name)
        if dtype != getattr(trt.DataType, TRT_DTYPES[t.dtype]):
            problems.append(f"{name!r}: ONNX type {dtype}, spec {t.dtype}")
        if len(shape) != len(t.shape):
            problems.append(f"{name!r}: ONNX rank {len(shape)}, spec {t.shape}")
            continue
        for i, (got, w) in enumerate(zip(shape, t.shape)):  # got < 0: dynamic in the ONNX
            if got >= 0 and isinstance(w, int) and got != w:
                problems.append(f"{name!r} axis {i}: ONNX has {got}, spec {w}")
            elif got >= 0 and isinstance(w, str):
                problems.append(f"{name!r} axis {i}: spec axis {w!r} is dynamic, ONNX fixes it to {got}")
        if any(d < 0 for d in shape):
            dynamic.append(name)
    if problems:
        raise ModelFolderError(
            f"the ONNX inputs of stage {spec.name!r} do not match its spec: " + "; ".join(problems)
            + "; re-export the ONNX with this version of export/")
    return dynamic


def add_profiles(trt: Any, builder: Any, config: Any, network: Any, spec: StageSpec) -> List[Dict]:
    """One optimisation profile per entry of ``spec.profile_ranges``; returns them as manifest records.

    A record is ``{input: {"min": [...], "opt": [...], "max": [...]}}`` per
    profile; the list is empty when the network has no dynamic input.
    """
    dynamic = check_network_inputs(trt, _network_inputs(trt, network), spec)
    if not dynamic:
        return []
    records = []
    for ranges in spec.profile_ranges:
        ranged = profile_shapes(spec, ranges, dynamic)
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
        records.append({n: {"min": list(r[0]), "opt": list(r[1]), "max": list(r[2])} for n, r in shapes.items()})
    return records


# 3. config + timing cache -------------------------------------------------------------
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


def configure(trt: Any, builder: Any, network: Any, spec: StageSpec, *, tf32: bool = True,
              workspace_gib: float = 4.0, timing_cache: Optional[Path] = None,
              log: Callable[[str], None] = print) -> Tuple[Any, Dict[str, Any]]:
    """Builder config of a strongly typed build; returns ``(config, record)``.

    ``tf32=False`` keeps FP32 layers bit-faithful (a reference for accuracy
    checks); the tensor types themselves are the ONNX graph's.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profiles = add_profiles(trt, builder, config, network, spec)
    load_timing_cache(config, timing_cache, log)
    return config, {"strongly_typed": True, "tf32": tf32, "workspace_gib": workspace_gib, "profiles": profiles}


# 4. build ------------------------------------------------------------------------
def build_engine(onnx_path: str | Path, engine_path: str | Path, spec: StageSpec, *,
                 timing_cache: Optional[Path] = None, workspace_gib: float = 4.0,
                 tf32: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Build ``onnx_path`` into a serialized engine at ``engine_path`` (atomic write).

    Returns ``tensorrt_version``, ``gpu`` ({name, compute_capability}),
    ``sha256``, ``bytes``, ``build_seconds`` and the build options
    (:func:`configure`'s record). Raises ``BackendUnavailable`` without
    TensorRT or a GPU, ``OnnxParseError``, ``ModelFolderError`` for ONNX/spec
    mismatches, ``EngineBuildError`` when TensorRT's build fails. On any
    error no (partial) engine file is left.
    """
    trt = load_tensorrt()
    cuda.require_device()
    engine_path = Path(engine_path)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(trt, builder)
    parser = parse_onnx(trt, network, logger, onnx_path)
    config, record = configure(trt, builder, network, spec, tf32=tf32, workspace_gib=workspace_gib,
                               timing_cache=timing_cache, log=log)
    log(f"{spec.name}: building a strongly typed engine from {Path(onnx_path).name} with TensorRT "
        f"{trt.__version__} ...")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    del parser  # the parser owns the ONNX weights until the build is done
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build an engine for {spec.name!r} from {str(onnx_path)!r} "
            "(see TensorRT's log above)")
    write_bytes_atomic(engine_path, memoryview(serialized))
    if timing_cache is not None:
        save_timing_cache(config, timing_cache)
    log(f"{spec.name}: wrote {engine_path.name} in {seconds:.1f} s")
    return {"tensorrt_version": trt.__version__, "gpu": cuda.gpu_record(), **record,
            "build_seconds": round(seconds, 3), "sha256": sha256_file(engine_path),
            "bytes": engine_path.stat().st_size}
