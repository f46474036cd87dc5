"""Every exported stage matches PyTorch in ONNX Runtime (fp32, relative L2 <= 1e-5)."""

import pytest

from export.onnx_export import check_parity, export_onnx
from runtime.core.compare import FP32_PARITY
from runtime.core.folder import ModelFolder
from export.subnets import build_subnets
from runtime.sam2.spec import STAGES, stage_specs


def test_manifest_records_parity_of_every_stage(tiny_engines):
    manifest = ModelFolder.open(tiny_engines).manifest
    assert manifest.status == "complete"
    for stage in STAGES:
        parity = manifest.stages[stage].parity
        assert parity["passed"] and parity["rel_l2"] <= FP32_PARITY.max_rel_l2, (stage, parity)
        assert parity["max_abs"] < 1e-4 and parity["cosine"] > 0.99999
    ma_cases = manifest.stages["memory_attention"].parity["cases"]
    assert [c["axes"]["num_mem"] for c in ma_cases] == [1, 7]  # two memory counts


@pytest.mark.parametrize("num_mem", [1, 3, 7])
def test_memory_attention_memory_counts(tiny_model, tmp_path, num_mem):
    spec = stage_specs(256)["memory_attention"]
    net = build_subnets(tiny_model)["memory_attention"]
    path = export_onnx(net, spec, tmp_path / "ma.onnx")
    # k references give min(k, 7) memories and min(k, 16) pointers.
    r = check_parity(net, spec, path, [{"objects": 2, "num_mem": num_mem, "num_ptr": num_mem}], seed=num_mem)
    print(f"memory attention, {num_mem} memories: rel L2 {r['rel_l2']:.2e} max abs {r['max_abs']:.2e}")
    assert r["rel_l2"] <= 1e-5


def test_memory_attention_matches_sam2_module(tiny_model):
    """The real-valued RoPE rewrite equals sam2's complex MemoryAttention, for each object of a
    padded batch: object 0 has 3 memories and 5 pointers, object 1 one memory and 2 pointers
    (padded to 3 and 5, the padding filled with noise that the mask must cancel)."""
    import torch

    from export.subnets import vision_pos_enc

    net = build_subnets(tiny_model)["memory_attention"]
    g = torch.Generator().manual_seed(0)
    e, nm, npt = 16, 3, 5
    counts = [(3, 5), (1, 2)]
    vf = torch.randn(1, 256, e, e, generator=g)
    mf, mp = torch.randn(2, nm, 64, e, e, generator=g), torch.randn(2, nm, 64, e, e, generator=g)
    ptr, ppos = torch.randn(2, npt, 256, generator=g), torch.randn(2, npt, 64, generator=g)
    mv = torch.tensor([[float(j < m) for j in range(nm)] for m, _ in counts])
    pv = torch.tensor([[float(j < p) for j in range(npt)] for _, p in counts])
    pos = vision_pos_enc(tiny_model).flatten(2).permute(2, 0, 1)
    with torch.no_grad():
        ours = net(vf, mf, mp, mv, ptr, ppos, pv)
        for i, (m, p) in enumerate(counts):
            mem = torch.cat([mf[i, :m].flatten(2).permute(0, 2, 1).reshape(-1, 1, 64),
                             ptr[i, :p].reshape(-1, 1, 64)])
            mpos = torch.cat([mp[i, :m].flatten(2).permute(0, 2, 1).reshape(-1, 1, 64),
                              ppos[i, :p].repeat_interleave(4, 0)[:, None]])
            ref = tiny_model.memory_attention(curr=[vf.flatten(2).permute(2, 0, 1)], curr_pos=[pos],
                                              memory=mem, memory_pos=mpos, num_obj_ptr_tokens=4 * p)
            ref = ref.permute(1, 2, 0).reshape(256, e, e)
            rel = ((ours[i] - ref).norm() / ref.norm()).item()
            assert rel < 1e-5, f"object {i}: rel L2 {rel:.2e} vs sam2's MemoryAttention"


def test_value_projection_folded_exactly(tiny_model):
    """Single-head attention folds v_proj into out_proj; same output as sam2's order."""
    import torch

    from export.subnets import MemoryAttentionNet, vision_pos_enc

    pos = vision_pos_enc(tiny_model)
    folded = MemoryAttentionNet(tiny_model, pos).eval()
    plain = MemoryAttentionNet(tiny_model, pos, fold_values=False).eval()
    assert all(a.fold_values for a in list(folded.self_attns) + list(folded.cross_attns))
    assert not any(a.fold_values for a in list(plain.self_attns) + list(plain.cross_attns))
    assert folded.cross_attns[0].vo_weight.shape == (256, 64)  # A @ V at the memories' width
    g = torch.Generator().manual_seed(1)
    e = pos.shape[-1]
    args = (torch.randn(1, 256, e, e, generator=g), torch.randn(2, 2, 64, e, e, generator=g),
            torch.randn(2, 2, 64, e, e, generator=g), torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
            torch.randn(2, 3, 256, generator=g), torch.randn(2, 3, 64, generator=g),
            torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    with torch.no_grad():
        a, b = folded(*args), plain(*args)
    assert ((a - b).norm() / b.norm()).item() < 1e-6


@pytest.mark.fullsize
def test_every_stage_at_1024(tmp_path):
    from export.assembly import assemble
    from export.sam2_build import parity_cases
    from export.models import ModelChoice
    from runtime.sam2.spec import DEFAULT_AXIS_RANGES

    model, _ = assemble(ModelChoice("tiny", "2.1", 1024), random_weights=True)
    nets, specs = build_subnets(model), stage_specs(1024)
    for stage in STAGES:
        path = export_onnx(nets[stage], specs[stage], tmp_path / f"{stage}.onnx")
        r = check_parity(nets[stage], specs[stage], path, parity_cases(stage, DEFAULT_AXIS_RANGES))
        print(f"1024 {stage}: rel L2 {r['rel_l2']:.2e}, max abs {r['max_abs']:.2e}")
        assert r["rel_l2"] <= 1e-5, stage
