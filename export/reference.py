"""The PyTorch reference of the few-shot flow (docs/inference-contract.md), on sam2's own methods.

Same user-facing API as :class:`runtime.FewShotSegmenter` so the two can be
compared call for call. Everything runs in fp32 on the CPU (or the model's
device) with sam2's ``forward_image``, ``_use_mask_as_output``,
``_forward_sam_heads``, ``_encode_new_memory`` and
``_prepare_memory_conditioned_features``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from export.subnets import IMAGENET_MEAN, IMAGENET_STD
from runtime.sam2.results import ConceptResult, SegmentationResult


class TorchFewShotSegmenter:
    """k reference images with masks (or points) -> masks of the concept in new images."""

    def __init__(self, sam: torch.nn.Module, threshold: float = 0.5):
        self.sam = sam.eval()
        self.threshold = threshold
        self.device = next(sam.parameters()).device
        self._refs: "OrderedDict[str, List[dict]]" = OrderedDict()
        self.stage_calls: Dict[str, int] = {"image_encoder": 0, "reference": 0, "target": 0}

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def _encode(self, image: np.ndarray):
        """uint8 RGB ``[H,W,3]`` -> sam2 backbone features at the model size."""
        s = self.sam.image_size
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).float() / 255.0
        x = x.permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        backbone_out = self.sam.forward_image((x - mean) / std)
        self.stage_calls["image_encoder"] += 1
        _, feats, pos, sizes = self.sam._prepare_backbone_features(backbone_out)
        high_res = [f.permute(1, 2, 0).view(f.size(1), f.size(2), *sz)
                    for f, sz in zip(feats[:-1], sizes[:-1])]
        return feats, pos, sizes, high_res

    # -------------------------------------------------------------- references
    @torch.no_grad()
    def add_reference(self, image: np.ndarray, mask: Optional[np.ndarray] = None,
                      points: Optional[Sequence[Sequence[float]]] = None,
                      labels: Optional[Sequence[int]] = None,
                      box: Optional[Sequence[float]] = None, scribble: Optional[np.ndarray] = None,
                      concept: str = "default") -> None:
        """One reference: a mask, points/box, or a scribble (every stroke pixel a positive
        click, as SANSA's ``build_prompt_inputs`` does: no subsampling here)."""
        sam, s = self.sam, self.sam.image_size
        h, w = image.shape[:2]
        feats, pos, sizes, high_res = self._encode(image)
        e = sizes[-1]
        pix_feat = feats[-1].permute(1, 2, 0).view(1, sam.hidden_dim, *e)
        if mask is not None:
            m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(self.device)
            m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            mask_inputs = (m > 0).float()
            low_res, _, _, _, _, obj_ptr, score_logits = sam._use_mask_as_output(
                pix_feat, high_res, mask_inputs)
            high_res_masks = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
            from_points = False
        else:
            if scribble is not None:
                ys, xs = np.nonzero(scribble)
                points, labels = np.stack([xs, ys], 1).astype(np.float32), [1] * len(xs)
            coords, lab = _prompt_points(points, labels, box, w, h, s)
            pix = pix_feat + sam.no_mem_embed.view(1, -1, 1, 1)
            _, _, _, _, high_res_masks, obj_ptr, score_logits = sam._forward_sam_heads(
                backbone_features=pix,
                point_inputs={"point_coords": coords.to(self.device),
                              "point_labels": lab.to(self.device)},
                mask_inputs=None, high_res_features=high_res, multimask_output=False)
            from_points = True
        maskmem, maskmem_pos = sam._encode_new_memory(
            feats, sizes, high_res_masks, score_logits, is_mask_from_pts=from_points)
        self.stage_calls["reference"] += 1
        self._refs.setdefault(concept, []).append({
            "maskmem_features": maskmem, "maskmem_pos_enc": maskmem_pos,
            "obj_ptr": obj_ptr, "object_score_logits": score_logits,
        })

    def clear(self) -> None:
        self._refs.clear()

    @property
    def concepts(self) -> List[str]:
        return list(self._refs)

    # ------------------------------------------------------------------ target
    @torch.no_grad()
    def segment(self, image: np.ndarray) -> SegmentationResult:
        if not self._refs:
            raise RuntimeError("segment() before any reference: call add_reference() first")
        sam = self.sam
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        feats, pos, sizes, high_res = self._encode(image)
        timings = {"image_encoder": time.perf_counter() - t0}
        out = {}
        for concept, refs in self._refs.items():
            t = time.perf_counter()
            k = len(refs)
            output_dict = {"cond_frame_outputs": {0: refs[0]},
                           "non_cond_frame_outputs": {j: refs[j] for j in range(1, k)}}
            pix = sam._prepare_memory_conditioned_features(
                frame_idx=k, is_init_cond_frame=False, current_vision_feats=feats[-1:],
                current_vision_pos_embeds=pos[-1:], feat_sizes=sizes[-1:],
                output_dict=output_dict, num_frames=k + 1)
            _, _, ious, low_res, _, _, _ = sam._forward_sam_heads(
                backbone_features=pix, point_inputs=None, mask_inputs=None,
                high_res_features=high_res, multimask_output=True)
            self.stage_calls["target"] += 1
            logits = F.interpolate(low_res, size=(h, w), mode="bilinear", align_corners=False)
            logits = logits[0, 0].float().cpu().numpy()
            prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            out[concept] = ConceptResult(mask=prob > self.threshold, logits=logits,
                                         iou=float(ious.max()))
            timings[f"concept:{concept}"] = time.perf_counter() - t
        return SegmentationResult(out, timings)


def _prompt_points(points, labels, box, w, h, s):
    """User prompts in image pixels -> sam2 point inputs in model pixels ``[1,P,2]``, ``[1,P]``."""
    coords, lab = [], []
    if box is not None:
        x0, y0, x1, y1 = box
        coords += [(x0, y0), (x1, y1)]
        lab += [2, 3]
    if points is not None:
        coords += [tuple(p) for p in points]
        lab += list(labels if labels is not None else [1] * len(points))
    c = torch.tensor(coords, dtype=torch.float32) * torch.tensor([s / w, s / h])
    return c[None], torch.tensor(lab, dtype=torch.int32)[None]
