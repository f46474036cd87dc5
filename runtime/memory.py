"""Which references a target attends to, and their position encodings (host side).

Follows sam2's ``_prepare_memory_conditioned_features`` for a target at frame
index ``k`` whose k references are frames ``0..k-1``, reference 0 being the
only conditioning frame (fewshot-pipeline.md, "Target").
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np


def select_memories(k: int, num_maskmem: int) -> List[Tuple[int, int]]:
    """``(reference index, maskmem_tpos_enc index)`` of the spatial memories, in order.

    Reference 0 (t_pos 0 -> index ``num_maskmem-1``), then references
    ``j >= k-(num_maskmem-1)``, oldest first, with index ``k-1-j``.
    """
    if k < 1:
        raise ValueError("need at least one reference")
    chosen = [(0, num_maskmem - 1)]
    for j in range(max(1, k - (num_maskmem - 1)), k):
        chosen.append((j, k - 1 - j))
    return chosen


def select_pointers(k: int, max_obj_ptrs: int) -> List[Tuple[int, int]]:
    """``(reference index, temporal distance)`` of the object pointers, in order.

    Reference 0 at distance k, then references k-1, k-2, ... at distances
    1, 2, ... up to ``min(k+1, max_obj_ptrs) - 1`` (sam2 with ``num_frames=k+1``).
    """
    max_ptrs = min(k + 1, max_obj_ptrs)
    chosen = [(0, k)]
    for t_diff in range(1, max_ptrs):
        j = k - t_diff
        if j < 1:
            break
        chosen.append((j, t_diff))
    return chosen


def sine_pe_1d(positions: np.ndarray, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """sam2's ``get_1d_sine_pe``: ``[N]`` -> ``[N, dim]`` (sin half, then cos half)."""
    half = dim // 2
    dim_t = np.arange(half, dtype=np.float32)
    dim_t = np.float32(temperature) ** (2 * (dim_t // 2) / half)
    pe = positions.astype(np.float32)[:, None] / dim_t.astype(np.float32)
    return np.concatenate([np.sin(pe), np.cos(pe)], axis=-1).astype(np.float32)


def pointer_pos_enc(distances: List[int], num_frames: int, cfg: dict, consts: dict) -> np.ndarray:
    """Position encodings ``[Np, mem_dim]`` of the selected pointers.

    Zero unless the config adds temporal encodings (SAM2.1); then the sine
    encoding of ``distance / t_diff_max``, projected by ``obj_ptr_tpos_proj``;
    ``t_diff_max = min(num_frames, max_obj_ptrs_in_encoder) - 1`` as in sam2
    (``num_frames`` is k+1 for k references, the video length when tracking).
    """
    mem_dim = cfg["mem_dim"]
    if not cfg["add_tpos_enc_to_obj_ptrs"]:
        return np.zeros((len(distances), mem_dim), np.float32)
    t_diff_max = min(num_frames, cfg["max_obj_ptrs_in_encoder"]) - 1
    pos = np.asarray(distances, np.float32) / np.float32(t_diff_max)
    if cfg["proj_tpos_enc_in_obj_ptrs"]:
        pe = sine_pe_1d(pos, cfg["hidden_dim"])
        w, b = consts["obj_ptr_tpos_proj_weight"], consts["obj_ptr_tpos_proj_bias"]
        return (pe @ w.T + b).astype(np.float32)
    return sine_pe_1d(pos, mem_dim)
