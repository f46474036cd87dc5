"""Stand-ins for the TensorRT objects the real bindings cannot create without the library.

Used inside a process where ``import tensorrt`` is the real bindings of one
version (``tests/real_packages.py``). A :class:`StandIn` of real class ``C``:

- refuses, at creation, a member ``C`` of this version does not have;
- raises ``AttributeError`` for any attribute ``C`` does not have (so code
  using a member TensorRT removed fails as it would on the real thing), and
  ``NotImplementedError`` for a real member the stand-in does not provide;
- allows setting only settable properties of ``C``;
- checks every call against the real method's pybind11 signatures (number of
  arguments, keyword names), and converts ``Dims`` arguments with the real
  ``trt.Dims`` (so a value TensorRT would not take is refused).

:func:`install` replaces ``trt.Builder``, ``trt.OnnxParser`` and
``trt.Runtime`` with factories of stand-ins that record what the code under
test did (:class:`Recorder`); everything else (enums, ``trt.Dims``,
``trt.Logger``, ``trt.nptype``, ``trt.DataType``) is the real module's.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorrt as trt

VERSION = trt.__version__
# The real classes, captured before install() replaces the module's factories.
Builder, OnnxParser, Runtime = trt.Builder, trt.OnnxParser, trt.Runtime


class Computed:
    """A property value computed on each read."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn


def _split_params(text: str) -> List[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def signatures(cls: type, name: str) -> List[List[Tuple[str, str, bool]]]:
    """Each overload of ``cls.name`` as ``[(param, type, has_default)]`` without ``self``."""
    doc = getattr(getattr(cls, name), "__doc__", "") or ""
    sigs = []
    for line in doc.splitlines():
        m = re.match(rf"^\s*(?:\d+\.\s+)?{re.escape(name)}\((.*)\)\s*->", line)
        if not m:
            continue
        params = []
        for p in _split_params(m.group(1)):
            if p.startswith("self") or p.startswith("*"):
                continue
            pname, _, rest = p.partition(":")
            ptype, _, default = rest.partition("=")
            params.append((pname.strip(), ptype.strip(), bool(default.strip())))
        sigs.append(params)
    return sigs


def _check_call(cls: type, name: str, args: tuple, kwargs: dict) -> tuple:
    sigs = signatures(cls, name)
    if not sigs:
        return args
    problems = []
    for params in sigs:
        names = [p[0] for p in params]
        if len(args) > len(params) or any(k not in names for k in kwargs):
            problems.append(f"{len(args)} positional / {sorted(kwargs)} keyword for {names}")
            continue
        given = set(names[:len(args)]) | set(kwargs)
        missing = [p[0] for p in params if p[0] not in given and not p[2]]
        if missing:
            problems.append(f"missing {missing} of {names}")
            continue
        converted = []
        for value, (_, ptype, _) in zip(args, params):
            if ptype.endswith(".Dims") and not isinstance(value, trt.Dims):
                value = trt.Dims(value)  # raises for what TensorRT would not convert
            converted.append(value)
        return tuple(converted)
    raise TypeError(f"TensorRT {VERSION} {cls.__name__}.{name} called with {len(args)} args {sorted(kwargs)}: "
                    + "; ".join(problems))


class StandIn:
    """An object of the real TensorRT class ``cls``; see the module docstring."""

    def __init__(self, cls: type, **members: Any):
        real = set(dir(cls))
        extra = sorted(set(members) - real)
        if extra:
            raise AssertionError(f"stand-in for {cls.__name__} provides {extra}, which TensorRT {VERSION}'s "
                                 f"{cls.__name__} does not have")
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_members", dict(members))

    def _kind(self, name: str) -> Optional[Any]:
        cls = object.__getattribute__(self, "_cls")
        try:
            return inspect.getattr_static(cls, name)
        except AttributeError:
            return None

    def __getattr__(self, name: str) -> Any:
        cls = object.__getattribute__(self, "_cls")
        if name not in dir(cls):
            raise AttributeError(f"'{cls.__name__}' object has no attribute '{name}' (TensorRT {VERSION})")
        members = object.__getattribute__(self, "_members")
        if name not in members:
            raise NotImplementedError(f"stand-in {cls.__name__}.{name} is not implemented (used by the code "
                                      "under test: add it to the stand-in)")
        value = members[name]
        if isinstance(self._kind(name), property):
            return value.fn() if isinstance(value, Computed) else value
        if callable(value):
            def call(*args, **kwargs):
                return value(*_check_call(cls, name, args, kwargs), **kwargs)
            return call
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        cls = object.__getattribute__(self, "_cls")
        kind = self._kind(name)
        if not isinstance(kind, property) or kind.fset is None:
            raise AttributeError(f"'{cls.__name__}' attribute '{name}' is not settable (TensorRT {VERSION})")
        object.__getattribute__(self, "_members")[name] = value

    def __repr__(self) -> str:
        return f"<stand-in {object.__getattribute__(self, '_cls').__name__} (TensorRT {VERSION})>"


# ----------------------------------------------------------------- the builder side
@dataclass
class Recorder:
    """What the code under test asked of TensorRT."""

    network_flags: List[int] = field(default_factory=list)
    config_flags_set: List[Any] = field(default_factory=list)
    config_flags_cleared: List[Any] = field(default_factory=list)
    memory_pools: Dict[Any, int] = field(default_factory=dict)
    profiles: List[Dict[str, Tuple[tuple, tuple, tuple]]] = field(default_factory=list)
    timing_cache_in: List[bytes] = field(default_factory=list)
    built: List[str] = field(default_factory=list)
    parsed: List[str] = field(default_factory=list)
    engines: List[Any] = field(default_factory=list)  # engine stand-ins made by Runtime
    # What the next calls should do (set by a test): parser errors as ParserError member values,
    # a build that returns None, a timing cache that set_timing_cache refuses.
    parse_errors: List[Dict[str, Any]] = field(default_factory=list)
    build_fails: bool = False
    refuse_cache: bytes = b"\0never"


ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 7: "INT64", 6: "INT32", 2: "UINT8", 9: "BOOL", 3: "INT8"}


def _tensor(name: str, shape, dtype) -> StandIn:
    return StandIn(trt.ITensor, name=name, shape=trt.Dims(shape), dtype=dtype)


def make_network(rec: Recorder) -> StandIn:
    inputs: List[StandIn] = []
    outputs: List[StandIn] = []

    def load_onnx(path: str) -> None:
        import onnx

        g = onnx.load(path, load_external_data=False).graph
        inits = {i.name for i in g.initializer}

        def dims(vi):
            return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]

        def dtype(vi):
            return getattr(trt.DataType, ONNX_TO_TRT[vi.type.tensor_type.elem_type])

        inputs.extend(_tensor(v.name, dims(v), dtype(v)) for v in g.input if v.name not in inits)
        outputs.extend(_tensor(v.name, dims(v), dtype(v)) for v in g.output)

    net = StandIn(trt.INetworkDefinition,
                  num_inputs=Computed(lambda: len(inputs)), num_outputs=Computed(lambda: len(outputs)),
                  get_input=lambda i: inputs[i], get_output=lambda i: outputs[i])
    return net, load_onnx


def make_parser_factory(rec: Recorder, loaders: Dict[int, Callable[[str], None]]):
    def parser(network, logger):
        _check_call(OnnxParser, "__init__", (network, logger), {})

        def parse_from_file(path):
            rec.parsed.append(path)
            loaders[id(network)](path)
            return not rec.parse_errors

        def get_error(i):
            e = rec.parse_errors[i]
            return StandIn(trt.ParserError, **{k: (lambda v=v: v) for k, v in e.items()})

        return StandIn(OnnxParser, parse_from_file=parse_from_file,
                       num_errors=Computed(lambda: len(rec.parse_errors)), get_error=get_error)
    return parser


def make_builder_factory(rec: Recorder, loaders: Dict[int, Callable[[str], None]]):
    def builder(logger):
        def create_network(flags=0):
            rec.network_flags.append(int(flags))
            net, load = make_network(rec)
            loaders[id(net)] = load
            return net

        def create_optimization_profile():
            shapes: Dict[str, tuple] = {}

            def set_shape(name, lo, opt, hi):
                shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

            prof = StandIn(trt.IOptimizationProfile, set_shape=set_shape)
            object.__getattribute__(prof, "_members")["__shapes__"] = shapes
            return prof

        def create_builder_config():
            cache = {"c": None}

            def add_optimization_profile(profile):
                rec.profiles.append(dict(object.__getattribute__(profile, "_members")["__shapes__"]))
                return len(rec.profiles) - 1

            def create_timing_cache(data):
                rec.timing_cache_in.append(bytes(data))
                t = StandIn(trt.ITimingCache, serialize=lambda: b"timing-cache")
                object.__getattribute__(t, "_members")["__data__"] = bytes(data)
                return t

            def set_timing_cache(c, ignore_mismatch):
                if object.__getattribute__(c, "_members")["__data__"] == rec.refuse_cache:
                    return False  # from another TensorRT version or GPU
                cache["c"] = c
                return True

            return StandIn(
                trt.IBuilderConfig,
                set_memory_pool_limit=lambda pool, size: rec.memory_pools.__setitem__(pool, size),
                set_flag=lambda f: rec.config_flags_set.append(f),
                clear_flag=lambda f: rec.config_flags_cleared.append(f),
                add_optimization_profile=add_optimization_profile,
                create_timing_cache=create_timing_cache, set_timing_cache=set_timing_cache,
                get_timing_cache=lambda: cache["c"])

        def build_serialized_network(network, config):
            if rec.build_fails:
                return None  # what TensorRT returns when the build fails (the reason is in its log)
            rec.built.append("engine")
            return memoryview(json.dumps({"inputs": [network.get_input(i).name for i in range(network.num_inputs)]})
                              .encode())

        return StandIn(Builder, create_network=create_network,
                       create_optimization_profile=create_optimization_profile,
                       create_builder_config=create_builder_config,
                       build_serialized_network=build_serialized_network)
    return builder


# ----------------------------------------------------------------- the runtime side
def _read(ptr: int, shape, dtype) -> np.ndarray:
    import ctypes

    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) if len(shape) else 1
    buf = (ctypes.c_byte * max(n * dtype.itemsize, 1)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=n).reshape(shape)


def make_runtime_factory(rec: Recorder):
    """``trt.Runtime``: engines described by JSON bytes (see :func:`engine_bytes`), computing
    ``out = sum of the inputs`` (elementwise, broadcast-free) into the bound addresses."""

    def runtime(logger):
        def deserialize_cuda_engine(data):
            cfg = json.loads(bytes(data))
            engine = make_engine(cfg)
            rec.engines.append(engine)
            return engine

        return StandIn(Runtime, deserialize_cuda_engine=deserialize_cuda_engine)
    return runtime


def engine_bytes(inputs: Dict[str, List[int]], outputs: Dict[str, List[int]],
                 profiles: List[Dict[str, List[List[int]]]], dtype: str = "FLOAT") -> bytes:
    return json.dumps({"inputs": inputs, "outputs": outputs, "profiles": profiles, "dtype": dtype}).encode()


def make_engine(cfg: Dict[str, Any]) -> StandIn:
    names = list(cfg["outputs"]) + list(cfg["inputs"])  # I/O order unlike any spec: binding is by name
    dtype = getattr(trt.DataType, cfg["dtype"])
    runs = {"n": 0}

    def create_execution_context():
        state = {"profile": 0, "shapes": {}, "addresses": {}, "profile_calls": []}

        def set_optimization_profile_async(index, stream):
            state["profile_calls"].append(index)
            state["profile"], state["shapes"] = index, {}
            return True

        def set_input_shape(name, shape):
            lo, _, hi = cfg["profiles"][state["profile"]][name]
            shape = tuple(shape)
            if not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False  # TensorRT refuses shapes outside the active profile
            state["shapes"][name] = shape
            return True

        def get_tensor_shape(name):
            if name in cfg["outputs"]:
                first = next(iter(cfg["inputs"]))
                return trt.Dims(state["shapes"].get(first, cfg["outputs"][name]))
            return trt.Dims(state["shapes"].get(name, cfg["inputs"][name]))

        def set_tensor_address(name, ptr):
            state["addresses"][name] = int(ptr)
            return True

        def execute_async_v3(stream):
            np_dtype = trt.nptype(dtype)
            shape = state["shapes"][next(iter(cfg["inputs"]))]
            total = sum(_read(state["addresses"][n], shape, np_dtype).astype(np.float64) for n in cfg["inputs"])
            for out in cfg["outputs"]:
                _read(state["addresses"][out], shape, np_dtype)[...] = total
            runs["n"] += 1
            return True

        ctx = StandIn(trt.IExecutionContext, set_optimization_profile_async=set_optimization_profile_async,
                      set_input_shape=set_input_shape, get_tensor_shape=get_tensor_shape,
                      set_tensor_address=set_tensor_address, execute_async_v3=execute_async_v3)
        object.__getattribute__(ctx, "_members")["__state__"] = state
        return ctx

    return StandIn(
        trt.ICudaEngine,
        num_io_tensors=len(names), num_optimization_profiles=len(cfg["profiles"]),
        get_tensor_name=lambda i: names[i],
        get_tensor_mode=lambda n: trt.TensorIOMode.INPUT if n in cfg["inputs"] else trt.TensorIOMode.OUTPUT,
        get_tensor_dtype=lambda n: dtype,
        get_tensor_shape=lambda n: trt.Dims(cfg["inputs"].get(n) or cfg["outputs"][n]),
        get_tensor_profile_shape=lambda n, p: [trt.Dims(s) for s in cfg["profiles"][p][n]],
        create_execution_context=create_execution_context)


def install(monkeypatch) -> Recorder:
    """Replace the library-backed factories of the real ``tensorrt`` module with stand-ins."""
    rec = Recorder()
    loaders: Dict[int, Callable[[str], None]] = {}
    monkeypatch.setattr(trt, "Builder", make_builder_factory(rec, loaders))
    monkeypatch.setattr(trt, "OnnxParser", make_parser_factory(rec, loaders))
    monkeypatch.setattr(trt, "Runtime", make_runtime_factory(rec))
    return rec
