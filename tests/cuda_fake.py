"""cuda-python's runtime API over host memory, for the CUDA buffer layer's glue tests.

"Device" memory is host memory, so copies are memmoves and a stand-in engine
can compute on bound addresses. Every method this fake has exists in real
cuda-python (``tests/export/test_tensorrt_api.py`` checks it against
``cuda.bindings.runtime`` / ``cuda.cudart`` of several versions).
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np


class FakeCudart:
    """cuda-python's runtime API over host memory; counts allocations."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    def __init__(self, devices=1):
        self.devices = devices
        self.device_mem, self.pinned_mem = {}, {}
        self.mallocs = 0
        self.copies = []
        self.waits = []
        self.streams = 0

    def _alloc(self, table, n):
        block = np.zeros(n, np.uint8)
        table[block.ctypes.data] = block
        return block.ctypes.data

    def cudaGetDeviceCount(self):
        return (0, self.devices) if self.devices else (100, 0)  # 100 = cudaErrorNoDevice

    def cudaGetDevice(self):
        return (0, 0)

    def cudaGetDeviceProperties(self, device):
        return (0, SimpleNamespace(name=b"FakeGPU\0\0\0", major=8, minor=7))

    def cudaGetErrorName(self, err):
        return (0, b"cudaErrorNoDevice" if int(err) == 100 else b"cudaErrorFake")

    def cudaGetErrorString(self, err):
        return (0, b"fake error")

    def cudaMemGetInfo(self):
        used = sum(b.nbytes for b in self.device_mem.values())
        return (0, (1 << 30) - used, 1 << 30)

    def cudaMalloc(self, n):
        self.mallocs += 1
        return (0, self._alloc(self.device_mem, n))

    def cudaFree(self, ptr):
        del self.device_mem[ptr]
        return (0,)

    def cudaMallocHost(self, n):
        return (0, self._alloc(self.pinned_mem, n))

    def cudaFreeHost(self, ptr):
        del self.pinned_mem[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.copies.append((int(kind), n))
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self):
        self.streams += 1
        return (0, 6 + self.streams)  # a handle of its own per stream

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        self.waits.append((stream, event))  # every call here is synchronous: nothing to wait for
        return (0,)

    def cudaEventCreate(self):
        return (0, 9)

    def cudaEventRecord(self, event, stream):
        return (0,)

    def cudaEventSynchronize(self, event):
        return (0,)

    def cudaEventDestroy(self, event):
        return (0,)
