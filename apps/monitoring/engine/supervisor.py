"""Runs `audobon up`'s children: starts them, restarts one that crashes, stops all cleanly.

Django-free: it only knows command lines. Each child gets its own process group, so
Ctrl-C reaches the supervisor alone and it decides the order of shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

logger = logging.getLogger("audobon.up")

STOP_GRACE_S = 10.0
# A child that ran at least this long before dying is restarted at once.
HEALTHY_RUN_S = 30.0
MAX_BACKOFF_S = 30.0


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, specs: list[ChildSpec], *, base_env: dict[str, str] | None = None):
        self.children = [_Child(spec) for spec in specs]
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self.stopping = False

    def _spawn(self, child: _Child) -> None:
        env = {**self.base_env, **child.spec.env, "AUDOBON_SUPERVISOR_PID": str(os.getpid())}
        child.proc = subprocess.Popen(
            child.spec.argv, env=env, start_new_session=True,
        )
        child.started = time.monotonic()
        child.restart_at = None
        logger.info("started %s (pid %s)", child.spec.name, child.proc.pid)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.proc.pid for c in self.children if c.proc and c.proc.poll() is None}

    def check(self) -> None:
        """Restart children that died, with a backoff for ones that die at once."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if child.restart_at is None:
                ran = now - child.started
                child.failures = 0 if ran >= HEALTHY_RUN_S else child.failures + 1
                delay = min(MAX_BACKOFF_S, 0.5 * 2 ** child.failures) if child.failures else 0
                logger.error("%s exited with code %s after %.1fs; restarting in %.1fs",
                             child.spec.name, code, ran, delay)
                child.restart_at = now + delay
            if now >= child.restart_at:
                self._spawn(child)

    def stop(self) -> None:
        """SIGTERM every child, wait, then SIGKILL whatever is left."""
        self.stopping = True
        alive = [c for c in self.children if c.proc and c.proc.poll() is None]
        for child in alive:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in alive:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", child.spec.name,
                               STOP_GRACE_S)
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
        logger.info("all children stopped")

    def run_forever(self, poll_s: float = 0.5) -> None:
        """Supervise until SIGINT or SIGTERM, then stop every child."""
        received: list[int] = []

        def on_signal(signum, frame):
            received.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not received:
                self.check()
                time.sleep(poll_s)
            logger.info("received %s; stopping", signal.Signals(received[0]).name)
        finally:
            self.stop()
            for s, handler in old.items():
                signal.signal(s, handler)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def watch_parent(interval_s: float = 1.0) -> None:
    """In a child: exit (via SIGTERM to itself) when the supervisor that started it is gone,
    so a supervisor killed with -9 leaves no orphans behind."""
    import threading

    parent = os.environ.get("AUDOBON_SUPERVISOR_PID")
    if not parent:
        return
    parent_pid = int(parent)

    def loop():
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, daemon=True, name="watch-parent").start()
