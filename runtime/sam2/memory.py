"""Which memories a frame attends to, and their position encodings (host side).

Follows sam2's ``_prepare_memory_conditioned_features``: for few-shot, a
target at frame index ``k`` whose k references are frames ``0..k-1``,
reference 0 being the only conditioning frame (docs/inference-contract.md,
"Target"); for tracking, sam2's own selection over a video.
"""

from __future__ import annotations

from typing import Container, Dict, List, Mapping, Optional, Sequence, Tuple

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


def closest_cond_frames(frame_idx: int, cond_frames: Sequence[int],
                        max_cond: int) -> Tuple[List[int], List[int]]:
    """sam2's ``select_closest_cond_frames``: (selected, unselected) prompted frames.

    All of them when ``max_cond`` is -1 or not exceeded; else the closest one
    before, the closest one at/after, then the nearest others.
    """
    frames = list(cond_frames)
    if max_cond == -1 or len(frames) <= max_cond:
        return frames, []
    selected: List[int] = []
    before = max((t for t in frames if t < frame_idx), default=None)
    after = min((t for t in frames if t >= frame_idx), default=None)
    selected += [t for t in (before, after) if t is not None]
    rest = sorted((t for t in frames if t not in selected), key=lambda t: abs(t - frame_idx))
    selected += rest[:max_cond - len(selected)]
    return selected, [t for t in frames if t not in selected]


def select_tracking_memory(frame_idx: int, cond_frames: Sequence[int], tracked: Container[int],
                           cfg: dict, num_frames: Optional[int]):
    """What a frame tracked forward attends to (sam2's ``_prepare_memory_conditioned_features``).

    ``cond_frames``: the object's prompted frames; ``tracked``: frames whose
    tracking output is still kept. Returns ``mems`` as ``(frame, maskmem_tpos_enc
    index)`` -- every selected prompted frame (index ``num_maskmem-1``), then the
    previous ``num_maskmem-1`` frames at the eval stride -- and ``ptrs`` as
    ``(frame, temporal distance)`` -- prompted frames in the past, then up to
    ``min(num_frames, max_obj_ptrs_in_encoder)-1`` previous frames.
    """
    n_mem = cfg["num_maskmem"]
    selected, unselected = closest_cond_frames(frame_idx, cond_frames, cfg["max_cond_frames_in_attn"])
    available = set(unselected)

    def kept(t: int) -> bool:
        return t in tracked or t in available

    mems = [(t, n_mem - 1) for t in selected]
    stride = cfg["memory_temporal_stride_for_eval"]
    for t_pos in range(1, n_mem):
        t_rel = n_mem - t_pos
        prev = frame_idx - 1 if t_rel == 1 else ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        if kept(prev):
            mems.append((prev, n_mem - t_pos - 1))
    ptrs: List[Tuple[int, int]] = []
    if cfg["use_obj_ptrs_in_encoder"]:
        max_ptrs = cfg["max_obj_ptrs_in_encoder"]
        if num_frames is not None:
            max_ptrs = min(num_frames, max_ptrs)
        past = [t for t in selected if t <= frame_idx] if cfg["only_obj_ptrs_in_the_past_for_eval"] \
            else selected
        signed = cfg["use_signed_tpos_enc_to_obj_ptrs"]
        ptrs = [(t, frame_idx - t if signed else abs(frame_idx - t)) for t in past]
        for t_diff in range(1, max_ptrs):
            t = frame_idx - t_diff
            if t < 0:
                break
            if kept(t):
                ptrs.append((t, t_diff))
    return mems, ptrs


def tracking_window(cfg: dict) -> int:
    """How many previous frames' outputs forward tracking can still look at."""
    stride = cfg["memory_temporal_stride_for_eval"]
    return max(cfg["num_maskmem"] * stride, cfg["max_obj_ptrs_in_encoder"])


def memory_pos_table(consts: Mapping[str, np.ndarray]) -> np.ndarray:
    """Position encoding of a spatial memory per ``maskmem_tpos_enc`` index: ``[num_maskmem,64,h,w]``.

    sam2 adds ``maskmem_pos_enc`` (the memory encoder's spatial encoding, the
    same for every memory of a model size) and ``maskmem_tpos_enc[i]`` (the
    memory's temporal slot), so a memory's encoding depends on its index only:
    made once per model, looked up per frame (:func:`pack_positions`).
    """
    base = consts["maskmem_pos_enc"][0]  # [64,h,w]
    return np.stack([base + t[:, None, None] for t in consts["maskmem_tpos_enc"]]).astype(np.float32)


def pack_objects(memories: Sequence[Mapping[str, Sequence]]) -> Dict[str, np.ndarray]:
    """Several objects' memory entries -> one batched feed of memory attention, but ``mem_pos``.

    Each of ``memories`` holds one object's entries, as arrays or sequences of
    per-entry arrays: ``mem_feats [Nm_i][64,h,w]``, ``mem_tpos [Nm_i]`` (each
    memory's ``maskmem_tpos_enc`` index, for :func:`pack_positions`),
    ``obj_ptrs [Np_i][256]`` and ``obj_ptr_pos [Np_i][64]``. Each entry is
    copied once, into its slot of a leading objects axis zero-padded to the
    largest ``Nm`` / ``Np``; ``mem_valid [N,Nm]`` / ``ptr_valid [N,Np]`` mark
    the real entries (1) and the padding (0, which the graph masks out of the
    attention).
    """
    if not memories:
        raise ValueError("no object to pack")
    out: Dict[str, np.ndarray] = {}
    for names, valid in ((("mem_feats",), "mem_valid"), (("obj_ptrs", "obj_ptr_pos"), "ptr_valid")):
        counts = [len(m[names[0]]) for m in memories]
        size = max(counts)
        for key in names:
            entry = np.shape(memories[0][key][0])
            batch = np.empty((len(memories), size) + entry, np.float32)  # each slot written once
            for i, m in enumerate(memories):
                for j, a in enumerate(m[key]):
                    batch[i, j] = a
                batch[i, len(m[key]):] = 0
            out[key] = batch
        out[valid] = (np.arange(size)[None, :] < np.asarray(counts)[:, None]).astype(np.float32)
    return out


def positions_key(memories: Sequence[Mapping[str, Sequence]]) -> Tuple[Tuple[int, ...], ...]:
    """What :func:`pack_positions` depends on: each object's ``mem_tpos`` (the same frame after
    frame once a tracked object's memory bank is full, so its packed encodings can be reused)."""
    return tuple(tuple(int(i) for i in m["mem_tpos"]) for m in memories)


def pack_positions(memories: Sequence[Mapping[str, Sequence]], table: np.ndarray) -> np.ndarray:
    """``mem_pos [N,Nm,64,h,w]`` of :func:`pack_objects`' batch: ``table[mem_tpos]`` per entry
    (``table`` from :func:`memory_pos_table`), zero in the padding."""
    key = positions_key(memories)
    out = np.zeros((len(key), max(map(len, key))) + table.shape[1:], np.float32)
    for i, idx in enumerate(key):
        out[i, :len(idx)] = table[list(idx)]
    return out


def plan_calls(memories: Sequence[Mapping[str, np.ndarray]], per_call: int, pad: bool) -> List[List[int]]:
    """Which objects go together into each memory-attention call, as lists of indices.

    Without ``pad``, objects with the same memory and pointer counts share a
    call (no padding, so no attention spent on it), in order of first
    appearance; with ``pad``, all objects share calls whatever their counts
    (:func:`pack_objects` pads them). Either way at most ``per_call`` objects
    per call.
    """
    groups: Dict[object, List[int]] = {}
    for i, m in enumerate(memories):
        key = 0 if pad else (len(m["mem_feats"]), len(m["obj_ptrs"]))
        groups.setdefault(key, []).append(i)
    return [g[j:j + per_call] for g in groups.values() for j in range(0, len(g), per_call)]
