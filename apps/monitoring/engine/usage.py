"""What one job uses while it runs: the peak resident memory of the process running it
and its children, and the peak GPU memory torch allocated in this process. Django-free."""

from __future__ import annotations

import sys
import threading

import psutil


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its children (gone children are skipped)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _cuda():
    """torch.cuda when this process already uses CUDA; never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    except Exception:  # a broken driver reads as no GPU
        return None


class UsageWatch:
    """Samples the process tree's RSS every `every` seconds in a daemon thread, from start()
    to stop(); `peak_rss` and `peak_gpu_memory` (None without CUDA) are the peaks seen."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.proc = psutil.Process()
        self.peak_rss = tree_rss(self.proc)
        self.peak_gpu_memory: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-watch", daemon=True)

    def start(self) -> UsageWatch:
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak_rss = max(self.peak_rss, tree_rss(self.proc))

    def stop(self) -> UsageWatch:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_rss = max(self.peak_rss, tree_rss(self.proc))
        cuda = _cuda()  # a job may have started using CUDA after start()
        if cuda is not None:
            self.peak_gpu_memory = int(max(cuda.max_memory_allocated(i) for i in range(cuda.device_count())))
        return self
