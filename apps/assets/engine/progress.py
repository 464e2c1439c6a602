"""Byte progress for store operations: throttled reporter steps and cooperative cancel."""

from __future__ import annotations

import time

from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter

STEP_EVERY_S = 0.1  # at most ~10 steps a second, whatever the chunk size or the file count


class ByteProgress:
    """Counts the bytes of one operation (a file, a tree, a backup) and reports them.

    Only ever called from the thread that runs the operation: a reporter may hold a
    per-thread database connection.
    """

    def __init__(self, reporter: Reporter | None, total: int | None, what: str = "") -> None:
        self.reporter: Reporter = reporter or NullReporter()
        self.total = total
        self.what = what
        self.done = 0
        self.started = time.monotonic()
        self._last_step = float("-inf")

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last_step >= STEP_EVERY_S:
            self._step(now)

    def finish(self) -> None:
        self._step(time.monotonic())

    def check_cancel(self) -> None:
        if self.reporter.cancelled():
            raise JobCancelled(f"cancelled during {self.what}" if self.what else "cancelled")

    def _step(self, now: float) -> None:
        self._last_step = now
        elapsed = max(now - self.started, 1e-9)
        self.reporter.step(self.done, self.total, mb_s=round(self.done / elapsed / 1e6, 1))
