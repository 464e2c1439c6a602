"""How an engine tells the world how far it got, without knowing who listens.

The task layer implements it with job events, the command line with a terminal bar.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class JobCancelled(Exception):
    """Raised by an engine that saw `reporter.cancelled()` and stopped early."""


@runtime_checkable
class Reporter(Protocol):
    def step(self, done: int, total: int | None = None, **metrics: float) -> None: ...

    def log(self, msg: str) -> None: ...

    def cancelled(self) -> bool: ...


class NullReporter:
    """Reports nowhere; for engines called from code that does not care."""

    def step(self, done: int, total: int | None = None, **metrics: float) -> None:
        pass

    def log(self, msg: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False
