"""The engine builder's glue, tested with a fake ``tensorrt`` builder API.

The fake records what the builder asks of TensorRT (network flags, builder
flags, layer precisions, profile shapes, timing-cache traffic) so that each
step is checked without TensorRT. The test marked ``tensorrt`` builds and runs
a real engine and compares it with ONNX Runtime; it is skipped, with the
reason, where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import tiny_layernorm_onnx

from export import trt_build
from export.trt_build import (
    EngineBuildError,
    OnnxParseError,
    build_engine,
    check_network_inputs,
    mark_fp32_layers,
    profile_shapes,
    tensorrt_status,
)
from runtime.core.backends import cuda
from runtime.errors import BackendUnavailable
from runtime.core.spec import StageSpec, TensorSpec
from runtime.sam2.spec import stage_specs

GPU = {"name": "FakeGPU", "compute_capability": "8.7"}


# fake TensorRT builder API ------------------------------------------------------------
class Tensor:
    def __init__(self, name, shape=(), dtype="float32"):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class Layer:
    """Stands for ILayer and its subclasses (the fake module maps I*Layer to it)."""

    def __init__(self, name, type, inputs, outputs, op=None):
        self.name, self.type, self.op = name, type, op
        self._inputs, self._outputs = inputs, outputs
        self.precision, self.output_types, self.compute_precision = None, {}, None

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class Network:
    def __init__(self, flags):
        self.flags, self.inputs, self.layers = flags, [], []

    num_inputs = property(lambda self: len(self.inputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_layer(self, i):
        return self.layers[i]

    def add(self, name, type, inputs, out_dtype="float32", op=None):
        ins = [self.tensors[n] if isinstance(n, str) else n for n in inputs]
        out = Tensor(name + ":0", dtype=out_dtype)
        self.tensors[name] = out
        self.layers.append(Layer(name, type, ins, [out], op))
        return out


class Cache:
    def __init__(self, data):
        self.data = data

    def serialize(self):
        return self.data + b"|grown"


class Config:
    def __init__(self):
        self.flags, self.cleared, self.profiles, self.pool = set(), set(), [], {}
        self.cache = None
        self.cache_inputs = []

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.cleared.add(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pool[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        self.cache_inputs.append(bytes(data))
        return None if data == b"corrupt" else Cache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


def make_fake_trt(version="10.3.0", graph=None, parse_errors=(), serialized=b"ENGINE"):
    """A fake ``tensorrt``; ``graph(network)`` fills the network the 'parser' produces."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.int32 = "float32", "float16", "int32"
    trt.LayerType = SimpleNamespace(**{k: k for k in (
        "CONVOLUTION", "NORMALIZATION", "SOFTMAX", "REDUCE", "UNARY", "ELEMENTWISE",
        "QUANTIZE", "DEQUANTIZE", "SHAPE", "CONSTANT", "SHUFFLE")})
    trt.ElementWiseOperation = SimpleNamespace(**{k: k for k in ("SUM", "SUB", "PROD", "DIV", "POW")})
    trt.UnaryOperation = SimpleNamespace(SQRT="SQRT", EXP="EXP")
    trt.BuilderFlag = SimpleNamespace(**{k: k for k in (
        "FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")})
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=0)
    trt.IElementWiseLayer = trt.IUnaryLayer = trt.INormalizationLayer = Layer
    trt.built = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Builder:
        def __init__(self, logger):
            trt.builder = self

        def create_network(self, flags):
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            return serialized() if callable(serialized) else serialized

    class ParserError:
        def __init__(self, desc, node, node_name, op):
            self._d, self._n, self._nn, self._op = desc, node, node_name, op

        def code(self):
            return "ErrorCode.UNSUPPORTED_NODE"

        def desc(self):
            return self._d

        def node(self):
            return self._n

        def node_name(self):
            return self._nn

        def node_operator(self):
            return self._op

        def file(self):
            return "ModelImporter.cpp"

        def line(self):
            return 42

        def func(self):
            return "parseNode"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = [ParserError(*e) for e in parse_errors]

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            self.network.tensors = {}
            (graph or toy_graph)(self.network)
            return not self.errors

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


TOY = StageSpec(
    "toy",
    inputs=(TensorSpec("x", ("batch", 4, 8, 8)), TensorSpec("pts", ("batch", "num_points", 2)),
            TensorSpec("flag", (1,))),
    outputs=(TensorSpec("y", ("batch", 4, 8, 8)),),
    axis_ranges={"batch": (1, 1, 4), "num_points": (1, 2, 8)},
)


def toy_graph(net, qdq=False):
    """Conv, a decomposed LayerNorm, a softmax and some integer shape arithmetic."""
    LT = SimpleNamespace(**{k: k for k in ("CONVOLUTION", "REDUCE", "ELEMENTWISE", "UNARY",
                                           "SOFTMAX", "SHAPE", "CONSTANT", "QUANTIZE", "DEQUANTIZE")})
    x = Tensor("x", (-1, 4, 8, 8))
    net.inputs = [x, Tensor("pts", (-1, -1, 2)), Tensor("flag", (1,))]
    net.tensors["x"] = x
    if qdq:
        net.add("q", LT.QUANTIZE, ["x"])
        net.add("dq", LT.DEQUANTIZE, ["q"])
    net.add("conv", LT.CONVOLUTION, ["x"])
    net.add("mean", LT.REDUCE, ["conv"])
    net.add("sub", LT.ELEMENTWISE, ["conv", "mean"], op="SUB")
    net.add("two", LT.CONSTANT, [])
    net.add("pow", LT.ELEMENTWISE, ["sub", "two"], op="POW")
    net.add("var", LT.REDUCE, ["pow"])
    net.add("eps", LT.CONSTANT, [])
    net.add("add_eps", LT.ELEMENTWISE, ["var", "eps"], op="SUM")
    net.add("sqrt", LT.UNARY, ["add_eps"], op="SQRT")
    net.add("div", LT.ELEMENTWISE, ["sub", "sqrt"], op="DIV")
    net.add("gamma", LT.CONSTANT, [])
    net.add("mul_gamma", LT.ELEMENTWISE, ["div", "gamma"], op="PROD")
    net.add("softmax", LT.SOFTMAX, ["mul_gamma"])
    net.add("exp", LT.UNARY, ["softmax"], op="EXP")
    net.add("shape", LT.SHAPE, ["x"], out_dtype="int32")
    net.add("int_reduce", LT.REDUCE, ["shape"], out_dtype="int32")


NORM_LAYERS = ["mean", "sub", "pow", "var", "add_eps", "sqrt", "div"]


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """Install a fake tensorrt and a fake GPU; returns a callable to swap the fake module."""
    monkeypatch.setattr(cuda, "require_device", lambda: None)
    monkeypatch.setattr(cuda, "gpu_record", lambda device=None: dict(GPU))

    def install(**kw):
        trt = make_fake_trt(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    onnx_path = tmp_path / "toy.onnx"
    onnx_path.write_bytes(b"not really onnx")
    return SimpleNamespace(install=install, onnx=onnx_path, engine=tmp_path / "toy.fp16.engine")


def quiet(msg):
    pass


# availability -------------------------------------------------------------------------
def test_absent_tensorrt_status_and_build(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ok, why = tensorrt_status()
    assert not ok and "TensorRT is not importable" in why and "pip install tensorrt" in why
    engine = tmp_path / "a.engine"
    with pytest.raises(BackendUnavailable, match="TensorRT is not importable"):
        build_engine(tmp_path / "a.onnx", engine, TOY, "fp16")
    assert not engine.exists()


def test_status_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt())
    monkeypatch.setattr(cuda, "device_status", lambda: (False, "no CUDA device found"))
    ok, why = tensorrt_status()
    assert not ok and why == "TensorRT 10.3.0 is installed but no CUDA device found"


# pure steps -------------------------------------------------------------------------
def test_profile_shapes_from_spec():
    specs = stage_specs(256)  # embedding side 16, ranges: num_mem (1,7,7), num_ptr (1,16,16)
    attn = profile_shapes(specs["memory_attention"])
    assert set(attn) == {"mem_feats", "mem_pos", "obj_ptrs", "obj_ptr_pos"}  # vision_feat is static
    assert attn["mem_feats"] == ((1, 64, 16, 16), (7, 64, 16, 16), (7, 64, 16, 16))
    assert attn["obj_ptrs"] == ((1, 256), (16, 256), (16, 256))
    dec = profile_shapes(specs["mask_decoder"])
    assert dec["point_coords"] == ((1, 1, 2), (1, 2, 2), (4, 64, 2))  # SANSA: 20 clicks, scribbles up to 64
    assert dec["point_labels"] == ((1, 1), (1, 2), (4, 64))
    assert "has_mask_input" not in dec
    custom = stage_specs(256, {"num_mem": (2, 3, 4)})["memory_attention"]
    assert profile_shapes(custom, ["mem_pos"]) == {"mem_pos": ((2, 64, 16, 16), (3, 64, 16, 16), (4, 64, 16, 16))}


def test_check_network_inputs_mismatches():
    ok = {"x": (-1, 4, 8, 8), "pts": (-1, -1, 2), "flag": (1,)}
    assert check_network_inputs(ok, TOY) == ["x", "pts"]
    with pytest.raises(ValueError, match=r"not in the spec \['extra'\]"):
        check_network_inputs({**ok, "extra": (1,)}, TOY)
    with pytest.raises(ValueError, match="'x' axis 1: ONNX has 3, spec 4"):
        check_network_inputs({**ok, "x": (-1, 3, 8, 8)}, TOY)
    with pytest.raises(ValueError, match="spec axis 'batch' is dynamic, ONNX fixes it to 1"):
        check_network_inputs({**ok, "x": (1, 4, 8, 8)}, TOY)


def test_mark_fp32_layers_patterns():
    trt = make_fake_trt()
    net = Network(0)
    net.tensors = {}
    toy_graph(net)
    marked = mark_fp32_layers(trt, net)
    assert marked == NORM_LAYERS  # not conv, the affine mul, softmax, exp or int layers
    by_name = {l.name: l for l in net.layers}
    for name in NORM_LAYERS:
        assert by_name[name].precision == "float32" and by_name[name].output_types == {0: "float32"}
    assert by_name["mul_gamma"].precision is None and by_name["int_reduce"].precision is None

    net2 = Network(0)
    net2.tensors = {}
    toy_graph(net2)
    assert mark_fp32_layers(trt, net2, norm=False, softmax=True) == ["softmax"]


def test_normalization_layer_is_pinned():
    trt = make_fake_trt()
    net = Network(0)
    net.tensors = {"x": Tensor("x")}
    net.add("ln", "NORMALIZATION", ["x"])
    net.add("conv", "CONVOLUTION", ["ln"])
    assert mark_fp32_layers(trt, net) == ["ln"]
    assert net.layers[0].compute_precision == "float32"


# full build with the fake -------------------------------------------------------------
def test_fp16_build_record_flags_and_profile(fake_env):
    trt = fake_env.install()
    rec = build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", workspace_gib=2, log=quiet)
    config = trt.builder.config
    assert config.flags == {"FP16", "PREFER_PRECISION_CONSTRAINTS"}
    assert config.pool == {"WORKSPACE": 2 << 30}
    assert [l.name for l in trt.builder.network.layers if l.precision == "float32"] == NORM_LAYERS
    (profile,) = config.profiles
    assert profile.shapes == {"x": ((1, 4, 8, 8), (1, 4, 8, 8), (4, 4, 8, 8)),
                              "pts": ((1, 1, 2), (1, 2, 2), (4, 8, 2))}
    assert fake_env.engine.read_bytes() == b"ENGINE"
    assert rec["file"] == "toy.fp16.engine" and rec["precision"] == "fp16"
    assert rec["tensorrt_version"] == "10.3.0" and rec["gpu"] == GPU
    assert rec["keep_norm_fp32"] is True and rec["fp32_layers"] == len(NORM_LAYERS)
    assert rec["profiles"] == [{"x": {"min": [1, 4, 8, 8], "opt": [1, 4, 8, 8], "max": [4, 4, 8, 8]},
                                "pts": {"min": [1, 1, 2], "opt": [1, 2, 2], "max": [4, 8, 2]}}]
    assert rec["build_seconds"] >= 0 and rec["bytes"] == 6 and len(rec["sha256"]) == 64
    assert trt.builder.network.flags == 0  # TensorRT 10: no EXPLICIT_BATCH


def test_onnx_axis_left_open_gets_fixed_profile(fake_env):
    def graph(net):
        toy_graph(net)
        net.inputs[2] = Tensor("flag", (-1,))  # the spec fixes it to (1,)

    fake_env.install(graph=graph)
    rec = build_engine(fake_env.onnx, fake_env.engine, TOY, "fp32", log=quiet)
    assert rec["profiles"][0]["flag"] == {"min": [1], "opt": [1], "max": [1]}


def test_explicit_batch_flag_on_trt8(fake_env):
    trt = fake_env.install(version="8.6.2")
    build_engine(fake_env.onnx, fake_env.engine, TOY, "fp32", log=quiet)
    assert trt.builder.network.flags == 1 << 0


def test_fp32_build_pins_nothing(fake_env):
    trt = fake_env.install()
    rec = build_engine(fake_env.onnx, fake_env.engine, TOY, "fp32", tf32=False, log=quiet)
    assert trt.builder.config.flags == set() and trt.builder.config.cleared == {"TF32"}
    assert not any(l.precision for l in trt.builder.network.layers)
    assert rec["keep_norm_fp32"] is False and rec["fp32_layers"] == 0


def test_obey_constraints_and_softmax(fake_env):
    trt = fake_env.install()
    rec = build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", constraints="obey",
                       keep_softmax_fp32=True, log=quiet)
    assert "OBEY_PRECISION_CONSTRAINTS" in trt.builder.config.flags
    assert rec["fp32_layers"] == len(NORM_LAYERS) + 1 and rec["precision_constraints"] == "obey"


def test_int8_needs_qdq(fake_env):
    fake_env.install()
    with pytest.raises(ValueError, match="no QuantizeLinear/DequantizeLinear"):
        build_engine(fake_env.onnx, fake_env.engine, TOY, "int8", log=quiet)
    assert not fake_env.engine.exists()
    trt = fake_env.install(graph=lambda net: toy_graph(net, qdq=True))
    rec = build_engine(fake_env.onnx, fake_env.engine, TOY, "int8", log=quiet)
    assert {"INT8", "FP16"} <= trt.builder.config.flags and rec["explicit_quantization"] is True


def test_bad_precision(fake_env):
    fake_env.install()
    with pytest.raises(ValueError, match="precision must be one of"):
        build_engine(fake_env.onnx, fake_env.engine, TOY, "bf16", log=quiet)


def test_parser_errors_name_the_node(fake_env):
    fake_env.install(parse_errors=[("unsupported op", 12, "/attn/Einsum_3", "Einsum")])
    with pytest.raises(OnnxParseError) as e:
        build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", log=quiet)
    msg = str(e.value)
    assert "unsupported op" in msg and "node #12 '/attn/Einsum_3' (Einsum)" in msg
    assert "ModelImporter.cpp:42" in msg
    with pytest.raises(FileNotFoundError, match="export it first"):
        build_engine(fake_env.onnx.with_name("missing.onnx"), fake_env.engine, TOY, "fp16", log=quiet)


def test_failed_build_leaves_no_engine(fake_env):
    fake_env.install(serialized=None)
    with pytest.raises(EngineBuildError, match="could not build"):
        build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", log=quiet)
    assert not fake_env.engine.exists()


def test_exception_while_writing_leaves_old_engine_and_no_temp(fake_env):
    fake_env.engine.write_bytes(b"OLD")

    class Unwritable:  # not a buffer: f.write raises mid-serialization
        pass

    fake_env.install(serialized=Unwritable())
    with pytest.raises(TypeError):
        build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", log=quiet)
    assert fake_env.engine.read_bytes() == b"OLD"
    assert sorted(p.name for p in fake_env.engine.parent.iterdir()) == ["toy.fp16.engine", "toy.onnx"]


def test_timing_cache_loaded_and_saved(fake_env):
    cache = fake_env.engine.parent / "timing.cache"
    trt = fake_env.install()
    build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", timing_cache=cache, log=quiet)
    assert trt.builder.config.cache_inputs == [b""] and cache.read_bytes() == b"|grown"
    trt = fake_env.install()
    build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", timing_cache=cache, log=quiet)
    assert trt.builder.config.cache_inputs == [b"|grown"] and cache.read_bytes() == b"|grown|grown"


def test_unusable_timing_cache_is_replaced(fake_env):
    cache = fake_env.engine.parent / "timing.cache"
    cache.write_bytes(b"corrupt")
    trt = fake_env.install()
    logs = []
    build_engine(fake_env.onnx, fake_env.engine, TOY, "fp16", timing_cache=cache, log=logs.append)
    assert trt.builder.config.cache_inputs == [b"corrupt", b""]
    assert any("starting a new one" in m for m in logs)
    assert cache.read_bytes() == b"|grown"


# real TensorRT (skipped without TensorRT and a GPU) -------------------------------------
_REAL_OK, _REAL_WHY = tensorrt_status()


def requires_tensorrt(fn):
    """Mark ``tensorrt`` and skip, with the reason, where TensorRT or a GPU is absent."""
    fn = pytest.mark.skipif(not _REAL_OK, reason=f"needs TensorRT and a CUDA GPU: {_REAL_WHY}")(fn)
    return pytest.mark.tensorrt(fn)




TINY = StageSpec("tiny", inputs=(TensorSpec("x", ("batch", 3, 8, 8)),),
                 outputs=(TensorSpec("y", ("batch", 4, 8, 8)),), axis_ranges={"batch": (1, 2, 4)})


@requires_tensorrt
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_real_build_and_run_matches_onnxruntime(tmp_path, precision, tol):
    ort = pytest.importorskip("onnxruntime")
    from runtime.core.backends.tensorrt import TensorRTStageRunner

    onnx_path = tiny_layernorm_onnx(tmp_path / "tiny.onnx")
    engine = tmp_path / f"tiny.{precision}.engine"
    cache = tmp_path / "timing.cache"
    rec = build_engine(onnx_path, engine, TINY, precision, timing_cache=cache, tf32=False,
                       log=lambda s: None)
    assert engine.is_file() and cache.is_file() and rec["profiles"][0]["x"]["max"] == [4, 3, 8, 8]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with TensorRTStageRunner(TINY, engine, rec) as runner:
        for batch in (1, 4):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
            got = runner.to_host(runner.infer({"x": x})["y"])
            ref = session.run(None, {"x": x})[0]
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
