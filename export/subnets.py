"""The four exported sub-networks, as ``nn.Module`` wrappers around a sam2 model.

Each wrapper's ``forward`` takes and returns exactly the tensors described in
:func:`runtime.sam2.spec.stage_specs` (same names, same order), so the exporter,
the runtime and the tests agree on one description. Host-side logic that is
control flow in sam2 (mask selection, object-score gating, memory selection)
stays out of the graphs and lives in the runtime.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from export.rope import RealRoPEAttention, rope_theta
from runtime.sam2.spec import MEM_DIM

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Attention bias of a padded memory entry: far enough below any real score that
# exp() of it is exactly 0 in float32 and float16, finite so that quantizers and
# float16 arithmetic never meet an infinity.
PAD_BIAS = -1.0e4


class ImageEncoderNet(nn.Module):
    """``image [B,3,S,S]`` RGB in [0,1] -> ``vision_feat [B,256,S/16,S/16]``,
    ``feat_s1 [B,64,S/8,S/8]``, ``feat_s0 [B,32,S/4,S/4]``.

    ImageNet normalisation runs inside the graph (on the accelerator); trunk
    with adapters folded in, FPN neck with the lowest level dropped, then the
    mask decoder's ``conv_s0``/``conv_s1`` on the two high-res levels
    (sam2's ``forward_image``).
    """

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor):
        out = self.sam.forward_image((image - self.mean) / self.std)
        feat_s0, feat_s1, vision_feat = out["backbone_fpn"][-3:]
        return vision_feat, feat_s1, feat_s0


class MemoryEncoderNet(nn.Module):
    """``vision_feat [B,256,h,w]`` + ``mask_logits [B,1,S,S]`` -> ``maskmem_features [B,64,h,w]``.

    Applies sam2's ``sigmoid(logits) * scale + bias`` before the memory
    encoder, as ``_encode_new_memory`` does (non-binarised path). The constant
    position encoding is shipped in ``constants.npz`` instead.
    """

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.memory_encoder = sam.memory_encoder
        self.scale = float(sam.sigmoid_scale_for_mem_enc)
        self.bias = float(sam.sigmoid_bias_for_mem_enc)

    def forward(self, vision_feat: torch.Tensor, mask_logits: torch.Tensor):
        mask = torch.sigmoid(mask_logits)
        if self.scale != 1.0:
            mask = mask * self.scale
        if self.bias != 0.0:
            mask = mask + self.bias
        return self.memory_encoder(vision_feat, mask, skip_mask_sigmoid=True)["vision_features"]


class MemoryAttentionNet(nn.Module):
    """Condition the current frame's features on each object's memories and pointers.

    Inputs: ``vision_feat [1,256,h,w]``; per object ``mem_feats [N,Nm,64,h,w]``,
    ``mem_pos [N,Nm,64,h,w]`` (spatial + temporal encoding, host-assembled),
    ``mem_valid [N,Nm]``, ``obj_ptrs [N,Np,256]``, ``obj_ptr_pos [N,Np,64]``,
    ``ptr_valid [N,Np]``. Output ``conditioned_feat [N,256,h,w]``: object i's
    features conditioned on its own memories, as a call with only them would
    give (entries whose ``*_valid`` is 0 get an attention bias of
    :data:`PAD_BIAS`, so their weight is exactly 0 in float32 and float16).
    Each pointer becomes 4 tokens of 64 (sam2's split for
    ``mem_dim < hidden_dim``); RoPE on spatial keys only. The current frame's
    sine position encoding is a graph constant. ``fold_values`` folds each
    single-head attention's value projection into its output projection
    (exact; see :class:`RealRoPEAttention`).
    """

    def __init__(self, sam: nn.Module, vision_pos_enc: torch.Tensor, fold_values: bool = True):
        super().__init__()
        ma = sam.memory_attention
        if not ma.batch_first:
            raise NotImplementedError("only batch_first memory attention is supported")
        side = vision_pos_enc.shape[-1]
        self.pos_enc_at_input = ma.pos_enc_at_input
        self.layers = ma.layers
        self.norm = ma.norm
        self.self_attns = nn.ModuleList(
            RealRoPEAttention(l.self_attn, side, rope_theta(l.self_attn), fold_values)
            for l in ma.layers)
        self.cross_attns = nn.ModuleList(
            RealRoPEAttention(l.cross_attn_image, side, rope_theta(l.cross_attn_image), fold_values)
            for l in ma.layers)
        # [1,256,h,w] -> [1,hw,256]
        self.register_buffer("curr_pos", vision_pos_enc.flatten(2).transpose(1, 2).contiguous(),
                             persistent=False)
        self.mem_dim = MEM_DIM
        self.hidden_dim = sam.hidden_dim

    def forward(self, vision_feat, mem_feats, mem_pos, mem_valid, obj_ptrs, obj_ptr_pos, ptr_valid):
        _, c, h, w = vision_feat.shape
        n, hw = mem_feats.shape[0], h * w
        split = self.hidden_dim // self.mem_dim
        curr = vision_feat.flatten(2).transpose(1, 2).expand(n, -1, -1)  # [N,hw,256]
        # [N,Nm,64,h,w] -> [N,Nm*hw,64], memory-major like sam2's concatenation
        mem_sp = mem_feats.flatten(3).transpose(2, 3).reshape(n, -1, self.mem_dim)
        pos_sp = mem_pos.flatten(3).transpose(2, 3).reshape(n, -1, self.mem_dim)
        ptr = obj_ptrs.reshape(n, -1, self.mem_dim)  # [N, Np*split, 64]
        ptr_pos = obj_ptr_pos.unsqueeze(2).expand(-1, -1, split, -1).reshape(n, -1, self.mem_dim)
        num_spatial = mem_sp.shape[1]
        memory = torch.cat([mem_sp, ptr], dim=1)
        memory_pos = torch.cat([pos_sp, ptr_pos], dim=1)
        # Each entry's validity over its tokens -> an additive key bias [N,1,1,Nk].
        valid = torch.cat([mem_valid.unsqueeze(2).expand(-1, -1, hw).reshape(n, -1),
                           ptr_valid.unsqueeze(2).expand(-1, -1, split).reshape(n, -1)], dim=1)
        key_bias = ((1.0 - valid) * PAD_BIAS).reshape(n, 1, 1, -1)

        out = curr + 0.1 * self.curr_pos if self.pos_enc_at_input else curr
        for layer, sa, ca in zip(self.layers, self.self_attns, self.cross_attns):
            t = layer.norm1(out)
            q = t + self.curr_pos if layer.pos_enc_at_attn else t
            out = out + sa(q, q, t)
            t = layer.norm2(out)
            q = t + self.curr_pos if layer.pos_enc_at_cross_attn_queries else t
            k = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
            out = out + ca(q, k, memory, num_spatial, key_bias)
            t = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(t)))
        out = self.norm(out)
        return out.transpose(1, 2).reshape(n, c, h, w)


class MaskDecoderNet(nn.Module):
    """Prompt encoder + mask decoder + object-pointer projection, all outputs.

    Inputs: ``image_embed [B,256,h,w]``, ``feat_s1``, ``feat_s0``,
    ``point_coords [B,P,2]`` (x, y in model-input pixels, 0..S),
    ``point_labels [B,P]`` (1 pos, 0 neg, 2/3 box corners, -1 padding),
    ``mask_input [B,1,4h,4w]`` (dense prompt, used where ``has_mask_input``=1).
    Outputs every mask token's result: ``masks [B,4,4h,4w]``,
    ``iou_pred [B,4]``, ``obj_ptr [B,4,256]`` and ``object_score_logits [B,1]``;
    the host picks single- or multi-mask output (sam2's ``multimask_output``
    flag is Python control flow).
    """

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.prompt_encoder = sam.sam_prompt_encoder
        self.mask_decoder = sam.sam_mask_decoder
        self.obj_ptr_proj = sam.obj_ptr_proj
        with torch.no_grad():
            self.register_buffer("image_pe", self.prompt_encoder.get_dense_pe().clone(),
                                 persistent=False)

    def forward(self, image_embed, feat_s1, feat_s0, point_coords, point_labels,
                mask_input, has_mask_input):
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels, pad=True)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe._embed_masks(mask_input) + (1 - has_mask_input) * no_mask
        masks, iou_pred, mask_tokens, object_score_logits = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[feat_s0, feat_s1],
        )
        return masks, iou_pred, self.obj_ptr_proj(mask_tokens), object_score_logits


def build_subnets(sam: nn.Module, fold_values: bool = True) -> Dict[str, nn.Module]:
    """The four wrappers for one model, in eval mode.

    ``fold_values=False``: memory attention in sam2's order of operations
    (value projections not folded into the output projections).
    """
    pos = vision_pos_enc(sam)
    nets = {
        "image_encoder": ImageEncoderNet(sam),
        "memory_encoder": MemoryEncoderNet(sam),
        "memory_attention": MemoryAttentionNet(sam, pos, fold_values),
        "mask_decoder": MaskDecoderNet(sam),
    }
    return {k: v.eval() for k, v in nets.items()}


@torch.no_grad()
def vision_pos_enc(sam: nn.Module) -> torch.Tensor:
    """Sine position encoding of the stride-16 level, ``[1,256,S/16,S/16]``."""
    e = sam.image_size // 16
    return sam.image_encoder.neck.position_encoding(torch.zeros(1, sam.hidden_dim, e, e))


@torch.no_grad()
def model_constants(sam: nn.Module) -> Dict[str, np.ndarray]:
    """Constant tensors the runtime needs on the host (``constants.npz``).

    Shapes at 1024: ``maskmem_pos_enc [1,64,64,64]``, ``maskmem_tpos_enc [7,64]``,
    ``no_mem_embed [256]``, ``mask_downsample_weight [1,1,4,4]`` and ``_bias [1]``;
    optional ``no_obj_ptr [256]``, ``no_obj_embed_spatial [64]``,
    ``obj_ptr_tpos_proj_weight [64,256]``/``_bias [64]``.
    """
    e = sam.image_size // 16
    mem_pos = sam.memory_encoder.position_encoding(torch.zeros(1, MEM_DIM, e, e))
    c = {
        "maskmem_pos_enc": mem_pos,
        "maskmem_tpos_enc": sam.maskmem_tpos_enc.reshape(sam.num_maskmem, -1),
        "no_mem_embed": sam.no_mem_embed.reshape(-1),
        "mask_downsample_weight": sam.mask_downsample.weight,
        "mask_downsample_bias": sam.mask_downsample.bias,
    }
    if sam.pred_obj_scores:
        c["no_obj_ptr"] = sam.no_obj_ptr.reshape(-1)
    if sam.no_obj_embed_spatial is not None:
        c["no_obj_embed_spatial"] = sam.no_obj_embed_spatial.reshape(-1)
    if sam.add_tpos_enc_to_obj_ptrs and sam.proj_tpos_enc_in_obj_ptrs:
        c["obj_ptr_tpos_proj_weight"] = sam.obj_ptr_tpos_proj.weight
        c["obj_ptr_tpos_proj_bias"] = sam.obj_ptr_tpos_proj.bias
    return {k: v.detach().float().cpu().numpy() for k, v in c.items()}


def model_config(sam: nn.Module) -> Dict[str, object]:
    """The sam2 flags the runtime's host logic follows (recorded in the manifest)."""
    dec = sam.sam_mask_decoder
    return {
        "image_size": int(sam.image_size),
        "hidden_dim": int(sam.hidden_dim),
        "mem_dim": int(sam.mem_dim),
        "num_maskmem": int(sam.num_maskmem),
        "max_obj_ptrs_in_encoder": int(sam.max_obj_ptrs_in_encoder),
        "use_obj_ptrs_in_encoder": bool(sam.use_obj_ptrs_in_encoder),
        "add_tpos_enc_to_obj_ptrs": bool(sam.add_tpos_enc_to_obj_ptrs),
        "proj_tpos_enc_in_obj_ptrs": bool(sam.proj_tpos_enc_in_obj_ptrs),
        "use_signed_tpos_enc_to_obj_ptrs": bool(sam.use_signed_tpos_enc_to_obj_ptrs),
        "only_obj_ptrs_in_the_past_for_eval": bool(sam.only_obj_ptrs_in_the_past_for_eval),
        "pred_obj_scores": bool(sam.pred_obj_scores),
        "soft_no_obj_ptr": bool(sam.soft_no_obj_ptr),
        "fixed_no_obj_ptr": bool(sam.fixed_no_obj_ptr),
        "use_multimask_token_for_obj_ptr": bool(sam.use_multimask_token_for_obj_ptr),
        "multimask_output_in_sam": bool(sam.multimask_output_in_sam),
        "multimask_output_for_tracking": bool(sam.multimask_output_for_tracking),
        "multimask_min_pt_num": int(sam.multimask_min_pt_num),
        "multimask_max_pt_num": int(sam.multimask_max_pt_num),
        "use_mask_input_as_output_without_sam": bool(sam.use_mask_input_as_output_without_sam),
        "directly_add_no_mem_embed": bool(sam.directly_add_no_mem_embed),
        "binarize_mask_from_pts_for_mem_enc": bool(sam.binarize_mask_from_pts_for_mem_enc),
        "sigmoid_scale_for_mem_enc": float(sam.sigmoid_scale_for_mem_enc),
        "sigmoid_bias_for_mem_enc": float(sam.sigmoid_bias_for_mem_enc),
        "memory_temporal_stride_for_eval": int(sam.memory_temporal_stride_for_eval),
        "max_cond_frames_in_attn": int(sam.max_cond_frames_in_attn),
        "iou_prediction_use_sigmoid": bool(sam.iou_prediction_use_sigmoid),
        "dynamic_multimask_via_stability": bool(dec.dynamic_multimask_via_stability),
        "dynamic_multimask_stability_delta": float(dec.dynamic_multimask_stability_delta),
        "dynamic_multimask_stability_thresh": float(dec.dynamic_multimask_stability_thresh),
    }
