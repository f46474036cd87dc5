"""CPU flags -> INT8 weight range (runtime/backends/cpu_features.py) and the runtime's refusal."""

import pytest

import runtime.core.backends.cpu_features as cf
from conftest import folder_with
from runtime.core.backends import onnx_variants

X86_VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
X86_AVX_VNNI = frozenset({"avx2", "avx_vnni"})
X86_AVX2 = frozenset({"avx2", "fma"})


def test_cpuinfo_parsing_reads_the_flags_line():
    text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: x\n"
    assert cf._cpuinfo_flags(text) == {"fpu", "avx2", "fma"}
    assert cf._cpuinfo_flags("Features\t: fp asimd asimddp\n") == {"fp", "asimd", "asimddp"}
    assert cf._cpuinfo_flags("nothing here\n") == frozenset()


@pytest.mark.parametrize("flags, machine, dot, saturates", [
    (X86_VNNI, "x86_64", True, False),
    (X86_AVX_VNNI, "x86_64", True, False),
    (X86_AVX2, "x86_64", False, True),
    (frozenset({"fp", "asimd", "asimddp"}), "aarch64", True, False),
    (frozenset({"fp", "asimd"}), "aarch64", False, False),  # Arm kernels widen; no saturation
])
def test_dot_product_and_saturation(flags, machine, dot, saturates):
    assert cf.int8_dot_product(flags, machine) is dot
    assert cf.saturates_full_range(flags, machine) is saturates


def test_unreadable_flags_are_unknown_and_treated_as_saturating_on_x86(monkeypatch):
    monkeypatch.setattr(cf, "cpu_flags", lambda: None)
    assert cf.int8_dot_product(machine="x86_64") is None
    assert cf.saturates_full_range(machine="x86_64") is True
    assert cf.saturates_full_range(machine="aarch64") is False
    assert "unreadable" in cf.describe(machine="x86_64")


def test_describe_names_what_matters():
    assert cf.describe(X86_VNNI, "x86_64") == "x86_64 with avx512_vnni"
    assert cf.describe(X86_AVX2, "x86_64") == "x86_64 without VNNI"
    assert cf.describe(frozenset({"asimddp"}), "aarch64") == "aarch64 with dotprod"


def _manifest(reduce_range):
    info = {} if reduce_range is None else {"reduce_range": reduce_range}
    return folder_with({"memory_attention": {"fp32": {}, "cpu-int8": info}, "mask_decoder": {"fp32": {}}})


STAGES = ("memory_attention", "mask_decoder")
CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize("reduce_range", [False, None])  # None: files from before the field existed
def test_full_range_files_are_not_run_where_they_saturate(monkeypatch, reduce_range):
    monkeypatch.setattr(cf, "saturates_full_range", lambda *a: True)
    m = _manifest(reduce_range)
    with pytest.warns(RuntimeWarning, match="full-range.*--cpu-int8-range reduced.*FP32"):
        assert onnx_variants(m, STAGES, "onnxruntime", "auto", CPU) == {
            "memory_attention": "fp32", "mask_decoder": "fp32"}
    with pytest.raises(ValueError, match="cpu_int8='on'.*saturates.*--cpu-int8-range reduced"):
        onnx_variants(m, STAGES, "onnxruntime", "on", CPU)


def test_reduced_range_files_run_everywhere_and_full_range_where_safe(monkeypatch):
    for saturates, reduce_range in ((True, True), (False, False), (False, True)):
        monkeypatch.setattr(cf, "saturates_full_range", lambda *a, v=saturates: v)
        for mode in ("auto", "on"):
            assert onnx_variants(_manifest(reduce_range), STAGES, "onnxruntime", mode, CPU) == {
                "memory_attention": "cpu-int8", "mask_decoder": "fp32"}
