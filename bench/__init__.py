"""Benchmarks: per-stage latency, throughput, work (FLOPs) and machine peak.

``python -m bench.throughput --model-dir DIR [DIR ...] --out bench/results/NAME``
writes ``NAME.json``, ``NAME.md`` and ``NAME.png`` (see bench/throughput.py).
"""
