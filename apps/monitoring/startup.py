"""Work `audobon up` does before any worker starts, registered by the apps that need it
(the spine knows nothing of the apps above it)."""

from __future__ import annotations

from collections.abc import Callable

STARTUP_HOOKS: list[tuple[str, Callable[[], object]]] = []


def on_startup(label: str):
    def register(fn):
        STARTUP_HOOKS.append((label, fn))
        return fn

    return register


def run_startup_hooks() -> list[tuple[str, object]]:
    return [(label, fn()) for label, fn in STARTUP_HOOKS]
