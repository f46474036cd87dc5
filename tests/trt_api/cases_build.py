"""The engine builder against the real bindings of one TensorRT version.

Builder, network, parser, config, profiles and timing cache are stand-ins of
the real classes (``standins.py``); the enums and flags are the real ones of
this version, so a flag or member this version does not have fails here as
it would on a device. The ONNX files are the project's exported stages at
256 px, one folder per precision (``SAM2EDGE_TRT_FOLDERS``: JSON
``{precision: folder}``).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import tensorrt as trt

from runtime.core.backends import cuda
from runtime.core.folder import ModelFolder
from runtime.errors import ModelFolderError
from tests.trt_api import standins

FOLDERS = json.loads(os.environ.get("SAM2EDGE_TRT_FOLDERS", "{}"))
GPU = {"name": "StandInGPU", "compute_capability": "8.7"}
STRONGLY_TYPED = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(cuda, "device_status", lambda: (True, GPU["name"]))
    monkeypatch.setattr(cuda, "require_device", lambda: None)
    monkeypatch.setattr(cuda, "gpu_record", lambda device=None: dict(GPU))
    return standins.install(monkeypatch)


def copy_folder(precision, tmp_path) -> ModelFolder:
    if precision not in FOLDERS:
        pytest.skip(f"no {precision} folder given")
    dst = tmp_path / precision
    shutil.copytree(FOLDERS[precision], dst)
    return ModelFolder.read(dst)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "dense-fp16"])
def test_every_stage_builds_strongly_typed_from_its_precision_file(gpu, tmp_path, precision):
    from export.engines import build_engines

    folder = copy_folder(precision, tmp_path)
    logs = []
    info = build_engines(folder, None, skip=False, log=logs.append)
    rec, n = gpu, len(folder.runnable_specs)  # the model's stages and the edge graphs (SAM2 folders)
    assert info["built"] and len(info["engines"]) == n and "edge_failures" not in info
    assert rec.network_flags == [STRONGLY_TYPED] * n  # nothing but STRONGLY_TYPED, every stage
    assert rec.config_flags_set == []  # no precision flags: the precision is the ONNX graph's
    assert all(size == 4 << 30 for size in rec.memory_pools.values())
    for name, spec in folder.runnable_specs.items():
        st = folder.stage(name)
        assert rec.parsed.count(str(folder.path / st.files[st.precision].file)) == 1
        e = st.engine
        assert e.built_from == st.precision and e.onnx_sha256 == st.files[st.precision].sha256
        assert e.tensorrt_version == trt.__version__ and e.gpu == GPU and e.build["strongly_typed"]
        assert (folder.path / e.file).is_file() and e.file == f"{name}.{st.precision}.engine"
        dynamic = any(t.dynamic_axes for t in spec.inputs)
        assert len(e.build["profiles"]) == (len(spec.profile_ranges) if dynamic else 0)
    if "memory_attention" in folder.specs:  # the one-memory bucket, then the full range (runtime/sam2/spec.py)
        ma = [p for p in rec.profiles if "mem_feats" in p]
        ranges = folder.specs["memory_attention"].axis_ranges
        assert [p["mem_feats"][2][1] for p in ma] == [1, ranges["num_mem"][2]]
        assert [p["mem_feats"][2][0] for p in ma] == [ranges["objects"][2]] * 2  # objects [N,Nm,...]
    if "preprocess" in folder.runnable_specs:  # a uint8 frame of 16..1920 px per side, FP32 whatever the precision
        frame = next(p["frame"] for p in rec.profiles if "frame" in p)
        assert frame == ((16, 16, 3), (1080, 1920, 3), (1920, 1920, 3))
        assert folder.stage("preprocess").engine.file == "preprocess.fp32.engine"
    if "postprocess" in folder.runnable_specs:  # N objects' logits to frames of 16..1920 px, FP32 always
        low = next(p["low_res"] for p in rec.profiles if "low_res" in p)
        assert [s[0] for s in low] == [1, 1, folder.specs["mask_decoder"].axis_ranges["objects"][2]]
        assert next(p["row_idx"] for p in rec.profiles if "row_idx" in p and "low_res" in p)[2] == (1920, 2)
        assert folder.stage("postprocess").engine.file == "postprocess.fp32.engine"
    if precision == "int8":
        assert {st.precision for st in folder.manifest.stages.values()} == {"int8", "fp16"}
    assert (folder.path / "timing.cache").read_bytes() == b"timing-cache"
    print(f"TensorRT {trt.__version__}: {precision} folder: {n} strongly typed engines "
          f"({', '.join(f'{k} {st.precision}' for k, st in folder.manifest.stages.items())}), "
          f"{len(rec.profiles)} profiles")


def test_reuse_needs_a_matching_record(gpu, tmp_path):
    """A matching engine is reused; one from another TensorRT version or GPU is rebuilt."""
    from export.engines import build_engines

    folder = copy_folder("fp32", tmp_path)
    build_engines(folder, None, skip=False, log=lambda m: None)
    previous = ModelFolder(folder.path, folder.manifest)
    again = ModelFolder.read(folder.path)  # what a rerun sees before building
    logs = []
    build_engines(again, previous, skip=False, log=logs.append)
    n = len(folder.runnable_specs)  # 4 stages + preprocess + postprocess (few-shot: no video graph)
    assert sum("up to date, reusing" in m for m in logs) == n == 6 and len(gpu.built) == n
    for stage in [*previous.manifest.stages.values(), *previous.manifest.edge_stages.values()]:
        stage.engine.tensorrt_version = "10.0.0.6"
    previous.manifest.stages["mask_decoder"].engine.gpu = {"name": "Orin", "compute_capability": "8.7"}
    logs.clear()
    build_engines(ModelFolder.read(folder.path), previous, skip=False, log=logs.append)
    assert sum("rebuilding" in m and "TensorRT 10.0.0.6" in m for m in logs) == n
    assert len(gpu.built) == 2 * n


def test_a_preprocess_graph_tensorrt_refuses_leaves_the_host_to_resize(gpu, tmp_path, monkeypatch):
    """The edge stage is an accelerator: its failed build is recorded, the model's engines still land."""
    from export import engines, trt_build
    from export.trt_build import OnnxParseError
    from runtime.core.backends import edge_stages_to_run

    folder = copy_folder("fp32", tmp_path)
    real = trt_build.build_engine

    def build(onnx_path, engine_path, spec, **kw):
        if spec.name == "preprocess":
            raise OnnxParseError("node #2 'Gather' (Gather): stand-in refusal")
        return real(onnx_path, engine_path, spec, **kw)

    monkeypatch.setattr(trt_build, "build_engine", build)
    logs = []
    info = engines.build_engines(folder, None, skip=False, log=logs.append)
    assert sorted(info["engines"]) == sorted([*folder.specs, "postprocess"])
    assert list(info["edge_failures"]) == ["preprocess"] and "stand-in refusal" in info["edge_failures"]["preprocess"]
    assert any("preprocess: engine NOT built" in m and "on the host" in m for m in logs)
    assert folder.stage("preprocess").engine is None and not (folder.path / "preprocess.fp32.engine").exists()
    folder.manifest.tensorrt = info
    assert list(edge_stages_to_run(folder, "tensorrt", None)) == ["postprocess"]  # its engine was built
    with pytest.raises(Exception, match="stand-in refusal"):
        edge_stages_to_run(folder, "tensorrt", None, {"preprocess": "backend"})


def test_onnx_that_does_not_match_the_spec_is_refused(gpu, tmp_path):
    from export.trt_build import build_engine

    folder = copy_folder("fp32", tmp_path)
    spec = folder.specs["mask_decoder"]
    with pytest.raises(ModelFolderError, match="do not match its spec"):
        build_engine(folder.path / "image_encoder.onnx", tmp_path / "x.engine", spec)
    assert not (tmp_path / "x.engine").exists()


def test_parser_errors_name_the_node(gpu, tmp_path):
    from export.trt_build import OnnxParseError, build_engine

    folder = copy_folder("fp32", tmp_path)
    gpu.parse_errors.append({"code": trt.ErrorCode.UNSUPPORTED_NODE, "desc": "no importer for op",
                             "node": 7, "node_name": "/attn/Einsum", "node_operator": "Einsum",
                             "file": "ModelImporter.cpp", "line": 42, "func": "parseNode"})
    engine = tmp_path / "x.engine"
    with pytest.raises(OnnxParseError) as e:
        build_engine(folder.path / "mask_decoder.onnx", engine, folder.specs["mask_decoder"], log=lambda m: None)
    msg = str(e.value)
    assert "node #7 '/attn/Einsum' (Einsum)" in msg and "no importer for op" in msg and "mask_decoder.onnx" in msg
    assert not engine.exists() and not gpu.built


def test_a_failed_build_leaves_the_old_engine_and_no_part_file(gpu, tmp_path):
    from export.trt_build import EngineBuildError, build_engine

    folder = copy_folder("fp32", tmp_path)
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"old engine")
    gpu.build_fails = True
    with pytest.raises(EngineBuildError, match="could not build an engine for 'mask_decoder'"):
        build_engine(folder.path / "mask_decoder.onnx", engine, folder.specs["mask_decoder"], log=lambda m: None)
    assert engine.read_bytes() == b"old engine" and sorted(p.name for p in tmp_path.iterdir()) == ["fp32", "x.engine"]


def test_timing_cache_is_loaded_saved_and_replaced_when_unusable(gpu, tmp_path):
    from export.trt_build import build_engine

    folder = copy_folder("fp32", tmp_path)
    spec, onnx_path = folder.specs["mask_decoder"], folder.path / "mask_decoder.onnx"
    cache = tmp_path / "timing.cache"
    build_engine(onnx_path, tmp_path / "a.engine", spec, timing_cache=cache, log=lambda m: None)
    assert gpu.timing_cache_in == [b""] and cache.read_bytes() == b"timing-cache"
    build_engine(onnx_path, tmp_path / "b.engine", spec, timing_cache=cache, log=lambda m: None)
    assert gpu.timing_cache_in[-1] == b"timing-cache"  # the stored cache is given to the build
    gpu.refuse_cache = b"timing-cache"
    logs = []
    build_engine(onnx_path, tmp_path / "c.engine", spec, timing_cache=cache, log=logs.append)
    assert gpu.timing_cache_in[-2:] == [b"timing-cache", b""]  # refused -> a new, empty one
    assert any("from another TensorRT/GPU; starting a new one" in m for m in logs)


def test_tf32_off_clears_only_tf32(gpu, tmp_path):
    from export.trt_build import build_engine

    folder = copy_folder("fp32", tmp_path)
    rec = build_engine(folder.path / "mask_decoder.onnx", tmp_path / "a.engine", folder.specs["mask_decoder"],
                       tf32=False, workspace_gib=1, log=lambda m: None)
    assert gpu.config_flags_cleared == [trt.BuilderFlag.TF32] and gpu.config_flags_set == []
    assert list(gpu.memory_pools.values()) == [1 << 30] and rec["tf32"] is False


def test_network_inputs_are_checked_against_the_spec_with_the_real_data_types():
    from export.trt_build import check_network_inputs
    from runtime.core.spec import StageSpec, TensorSpec

    toy = StageSpec("toy", inputs=(TensorSpec("x", ("batch", 4, 8, 8)), TensorSpec("pts", ("batch", "n", 2)),
                                   TensorSpec("flag", (1,), dtype="int64")),
                    outputs=(TensorSpec("y", ("batch", 4, 8, 8)),), axis_ranges={"batch": (1, 1, 4), "n": (1, 2, 8)})
    f32, i64 = trt.DataType.FLOAT, trt.DataType.INT64
    ok = {"x": ((-1, 4, 8, 8), f32), "pts": ((-1, -1, 2), f32), "flag": ((1,), i64)}
    assert check_network_inputs(trt, ok, toy) == ["x", "pts"]
    for bad, message in [({"extra": ((1,), f32)}, r"not in the spec \['extra'\]"),
                         ({"x": ((-1, 3, 8, 8), f32)}, "'x' axis 1: ONNX has 3, spec 4"),
                         ({"x": ((1, 4, 8, 8), f32)}, "spec axis 'batch' is dynamic, ONNX fixes it to 1"),
                         ({"flag": ((1,), trt.DataType.INT32)}, "'flag': ONNX type DataType.INT32, spec int64"),
                         ({"x": ((-1, 4, 8, 8), trt.DataType.HALF)}, "'x': ONNX type DataType.HALF, spec float32")]:
        with pytest.raises(ModelFolderError, match=message):
            check_network_inputs(trt, {**ok, **bad}, toy)


def test_an_axis_the_onnx_leaves_open_but_the_spec_fixes_gets_a_fixed_profile(gpu):
    from export.trt_build import add_profiles
    from runtime.core.spec import StageSpec, TensorSpec

    toy = StageSpec("toy", inputs=(TensorSpec("x", ("batch", 4)), TensorSpec("flag", (1,))),
                    outputs=(TensorSpec("y", ("batch", 4)),), axis_ranges={"batch": (1, 2, 4)})
    inputs = [standins._tensor("x", [-1, 4], trt.DataType.FLOAT), standins._tensor("flag", [-1], trt.DataType.FLOAT)]
    network = standins.StandIn(trt.INetworkDefinition, num_inputs=2, get_input=lambda i: inputs[i])
    builder = trt.Builder(trt.Logger())
    records = add_profiles(trt, builder, builder.create_builder_config(), network, toy)
    assert records == [{"x": {"min": [1, 4], "opt": [2, 4], "max": [4, 4]},
                        "flag": {"min": [1], "opt": [1], "max": [1]}}]
