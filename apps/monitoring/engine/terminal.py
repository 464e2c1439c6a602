"""The command line's Reporter: a one-line progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TerminalProgress:
    """Reporter for foreground commands: `[#####.....]  42% 4/10 ETA 00:03 loss=0.51`."""

    def __init__(self, label: str = "", stream: TextIO | None = None, width: int = 30):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_line = ""
        self._last_plain = -1.0

    def render(self, done: int, total: int | None, metrics: dict | None = None,
               eta: float | None = None) -> str:
        frac = (done / total) if total else 0.0
        frac = max(0.0, min(1.0, frac))
        filled = round(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        if eta is None and total and done:
            elapsed = time.monotonic() - self.started
            eta = elapsed / done * (total - done)
        parts = [f"{self.label} " if self.label else "", f"[{bar}] {frac * 100:5.1f}%"]
        if total:
            parts.append(f" {done}/{total}")
        parts.append(f" ETA {format_seconds(eta)}")
        for name, value in (metrics or {}).items():
            parts.append(f" {name}={value:.4g}")
        return "".join(parts)

    def show(self, line: str, final: bool = False) -> None:
        if self.is_tty:
            pad = " " * max(0, len(self._last_line) - len(line))
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
            self.stream.flush()
        else:
            # No carriage returns into a log file: a line at most every 2 s, and the last.
            now = time.monotonic()
            if final or now - self._last_plain >= 2:
                self._last_plain = now
                self.stream.write(line + "\n")
                self.stream.flush()
        self._last_line = line

    # Reporter protocol
    def step(self, done: int, total: int | None = None, **metrics: float) -> None:
        self.show(self.render(done, total, metrics), final=bool(total and done >= total))

    def log(self, msg: str) -> None:
        if self.is_tty and self._last_line:
            self.stream.write("\r" + " " * len(self._last_line) + "\r")
        self.stream.write(msg + "\n")
        if self.is_tty and self._last_line:
            self.stream.write(self._last_line)
        self.stream.flush()

    def cancelled(self) -> bool:
        return False
