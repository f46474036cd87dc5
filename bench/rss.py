"""Host memory of one benchmark variant: RSS sampled in a background thread.

``ru_maxrss`` is the peak of the whole process, so in a benchmark that runs
several variants one after another it says nothing about the later ones.
:class:`RssSampler` samples the resident set size every ``interval`` seconds
while a variant runs and reports its peak and how far that peak rose above
the RSS the variant started at (what loading and running it cost on top of
what the process already held). RSS comes from psutil where installed, else
from ``/proc/self/statm`` (Linux devices with only the runtime installed).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Dict, Optional


def rss_reader() -> Callable[[], int]:
    """A function returning this process's resident set size in bytes."""
    try:
        import psutil
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")

        def from_proc() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return from_proc
    proc = psutil.Process()
    return lambda: proc.memory_info().rss


class RssSampler:
    """``with RssSampler() as s: ...`` then ``s.result()``: ``{"rss_peak_mb", "rss_growth_mb"}``."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self._rss = rss_reader()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.start_mb = self.peak_mb = 0.0

    def _rss_mb(self) -> float:
        return self._rss() / 2 ** 20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> "RssSampler":
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())

    def result(self) -> Dict[str, float]:
        return {"rss_peak_mb": self.peak_mb, "rss_growth_mb": self.peak_mb - self.start_mb}
