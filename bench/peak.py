"""Machine peak: a large fp32 matmul timed in the same run as the benchmark.

The achieved GFLOP/s of every stage is reported as a fraction of this number,
so "40% of peak" means the same thing on any machine. On the CPU the matmul
runs through torch (MKL/oneDNN) with the benchmark's thread count where torch
is installed, else through NumPy's BLAS (the device side, where only the
runtime is installed: its own thread count); the record names the library.
Where ``torch.cuda`` is available it is also timed on the GPU with CUDA events.
The CPU's INT8 GEMM rate (ONNX Runtime's ``MatMulInteger``, uint8 x int8, the
kernel the dynamic-INT8 stages run on) is measured too, for reading the
``--cpu-int8`` variants: their GEMMs can run faster than the FP32 peak.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn``, after one untimed warm-up call
    (thread pool start, packing buffers)."""
    fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_matmul_peak(n: int = 4096, repeats: int = 3, threads: Optional[int] = None) -> Dict[str, float]:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` fp32 matmul on the CPU."""
    try:
        import torch
    except ImportError:
        import numpy as np

        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        best = _best_seconds(lambda: a @ b, repeats)
        return {"device": "cpu", "library": f"numpy {np.__version__}", "n": n, "seconds": best,
                "gflops": 2.0 * n ** 3 / best / 1e9, "threads": None}
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        best = _best_seconds(lambda: torch.mm(a, b), repeats)
        return {"device": "cpu", "library": f"torch {torch.__version__}", "n": n, "seconds": best,
                "gflops": 2.0 * n ** 3 / best / 1e9, "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(old)


def cpu_int8_matmul_peak(n: int = 4096, repeats: int = 3, threads: Optional[int] = None
                         ) -> Optional[Dict[str, float]]:
    """Best-of-``repeats`` GOP/s of an ``n x n`` uint8 x int8 ``MatMulInteger`` in ONNX Runtime (CPU);
    None where the ``onnx`` package (to write the one-node graph) is not installed."""
    import numpy as np
    import onnxruntime as ort
    try:
        from onnx import TensorProto, helper
    except ImportError:
        return None

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8),
             "b": rng.integers(-127, 128, (n, n), dtype=np.int8)}
    best = _best_seconds(lambda: sess.run(None, feeds), repeats)
    return {"device": "cpu", "n": n, "seconds": best, "gops": 2.0 * n ** 3 / best / 1e9}


def cuda_matmul_peak(n: int = 8192, repeats: int = 5) -> Optional[Dict[str, float]]:
    """Best GFLOP/s of an fp32 (TF32 off) matmul on the GPU, timed with CUDA events; None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        torch.mm(a, b)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(max(1, repeats)):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.mm(a, b)
            e.record()
            e.synchronize()
            best = min(best, s.elapsed_time(e) / 1e3)
        return {"device": torch.cuda.get_device_name(0), "n": n, "seconds": best,
                "gflops": 2.0 * n ** 3 / best / 1e9}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def measure_peak(n: int = 4096, repeats: int = 3, threads: Optional[int] = None) -> Dict[str, object]:
    """``{"cpu": {...}, "cpu_int8": {...}, "cuda": {...} or None}``."""
    return {"cpu": cpu_matmul_peak(n, repeats, threads),
            "cpu_int8": cpu_int8_matmul_peak(n, repeats, threads), "cuda": cuda_matmul_peak()}
