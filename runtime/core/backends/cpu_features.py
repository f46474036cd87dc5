"""Does this CPU multiply INT8 without saturating? (decides the dynamic-INT8 weight range)

ONNX Runtime's CPU INT8 GEMM (MLAS, ``MatMulInteger`` with int8 weights) on
x86 uses ``vpmaddubsw`` where the CPU has no VNNI instructions: it adds two
uint8 x int8 products into an int16 *with saturation*, so full-range (8-bit)
weights overflow and results are wrong (measured: ``bench/reports/cpu-int8-notes.md``).
With VNNI (``vpdpbusd`` accumulates in int32) and on Arm there is no
such overflow. ORT's answer is ``reduce_range``: quantize weights to 7 bits.

:func:`int8_dot_product` reads the running CPU's flags (Linux
``/proc/cpuinfo``); :func:`saturates_full_range` says whether full-range INT8
weights are unsafe here. Both are cheap and import nothing heavy (the
runtime calls them when it picks which ONNX file each stage runs).
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import FrozenSet, Optional

# x86 flags of integer dot-product instructions that accumulate in int32.
X86_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def _cpuinfo_flags(text: str) -> FrozenSet[str]:
    """The first ``flags`` (x86) / ``Features`` (Arm) line of /proc/cpuinfo, as a set."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def is_x86(machine: Optional[str] = None) -> bool:
    """True on x86 CPUs (``platform.machine()`` unless given)."""
    return (machine or platform.machine()).lower() in X86_MACHINES


@lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Optional[FrozenSet[str]]:
    """This CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        return _cpuinfo_flags(Path(cpuinfo).read_text(errors="replace"))
    except OSError:
        return None


def int8_dot_product(flags: Optional[FrozenSet[str]] = None, machine: Optional[str] = None
                     ) -> Optional[bool]:
    """Whether the CPU has int32-accumulating INT8 dot products (x86 VNNI / Arm dotprod).

    None: unknown (flags unreadable). ``flags``/``machine`` default to this CPU's.
    """
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return None
    if is_x86(machine):
        return bool(flags & X86_VNNI_FLAGS)
    return "asimddp" in flags


def saturates_full_range(flags: Optional[FrozenSet[str]] = None, machine: Optional[str] = None) -> bool:
    """True where full-range INT8 weights overflow ORT's CPU GEMM: x86 without VNNI (or unknown x86)."""
    return is_x86(machine) and not int8_dot_product(flags, machine)


def describe(flags: Optional[FrozenSet[str]] = None, machine: Optional[str] = None) -> str:
    """One phrase for logs and manifests, e.g. ``"x86_64 with avx512_vnni"``."""
    machine = machine or platform.machine()
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return f"{machine} (CPU flags unreadable)"
    if is_x86(machine):
        have = sorted(flags & X86_VNNI_FLAGS)
        return f"{machine} with {', '.join(have)}" if have else f"{machine} without VNNI"
    return f"{machine} {'with' if 'asimddp' in flags else 'without'} dotprod"
