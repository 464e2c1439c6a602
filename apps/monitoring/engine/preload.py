"""A command's heavy work in a child forked at its start, so that importing torch (seconds)
happens while the parent sets up Django and plans, instead of after.

`EngineProcess.start(modules)` forks before anything else is loaded: the child imports
`modules` and waits; the parent goes on, and later hands it engine calls one at a time
(`call(func, *args, **kwargs)`), which run in the child with their progress reported back to
the parent's reporter. The calls and their results cross a pipe between the two processes of
one command (pickled: nothing from outside is ever unpickled). The child ends when the parent
closes the pipe or exits; a child that dies mid-call is an EngineProcessError naming its
signal or exit code.

Only for a foreground command on a POSIX system; a worker process imports torch once for
every job and calls the engine directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import Any

_current: EngineProcess | None = None


class EngineProcessError(RuntimeError):
    """The engine process died, or could not run the call."""


class _PipeReporter:
    """The reporter a call gets in the child: steps and log lines go to the parent's."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def step(self, done: int, total: int | None = None, **metrics: float) -> None:
        self.conn.send(("step", (done, total), metrics))

    def log(self, msg: str) -> None:
        self.conn.send(("log", (msg,), {}))

    def cancelled(self) -> bool:
        return False  # a foreground command is cancelled by Ctrl-C, which reaches both processes


class EngineProcess:
    def __init__(self, pid: int, conn: Connection):
        self.pid, self.conn = pid, conn
        self.closed = False
        self.used = False

    @classmethod
    def start(cls, modules: tuple[str, ...]) -> EngineProcess | None:
        """Fork the child (importing `modules`) and make it the current one; None where fork
        is not available or AUDOBON_ENGINE_PROCESS=0."""
        global _current
        if not hasattr(os, "fork") or os.environ.get("AUDOBON_ENGINE_PROCESS", "1") == "0":
            return None
        parent_end, child_end = Pipe(duplex=True)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            parent_end.close()
            code = 0
            try:
                _serve(child_end, modules)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child_end.close()
        _current = cls(pid, parent_end)
        return _current

    def call(self, func, *args, reporter=None, **kwargs) -> Any:
        """`func(*args, **kwargs)` in the child, with `reporter=` its proxy when given one here;
        returns its result or raises its exception."""
        if self.closed:
            raise EngineProcessError("the engine process is closed")
        self.used = True
        try:
            self.conn.send((func, args, kwargs, reporter is not None))
            while True:
                kind, payload, extra = self.conn.recv()
                if kind == "step":
                    if reporter is not None:
                        reporter.step(*payload, **extra)
                elif kind == "log":
                    if reporter is not None:
                        reporter.log(*payload)
                elif kind == "ok":
                    return payload
                else:  # "error"
                    raise payload
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.closed = True
            raise EngineProcessError(f"the engine process ended during {func.__name__}: "
                                     f"{self._exit_status()}") from exc

    def _exit_status(self) -> str:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "its status is unknown"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            why = " (killed for memory?)" if sig == signal.SIGKILL else ""
            return f"killed by signal {sig} ({signal.Signals(sig).name}){why}"
        return f"exit code {os.WEXITSTATUS(status)}"

    def close(self) -> None:
        """Let the child end, and wait for it; one never called is stopped at once (it may be
        still importing, with nothing of its own to finish)."""
        global _current
        if not self.closed:
            self.closed = True
            if not self.used:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.conn.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if _current is self:
            _current = None


def current() -> EngineProcess | None:
    """The engine process this command started, if any (and still open)."""
    return _current if _current is not None and not _current.closed else None


def _serve(conn: Connection, modules: tuple[str, ...]) -> None:
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once; the parent reports it
    failed: BaseException | None = None
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            failed = exc
            break
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone, or done
        if message is None:
            return
        func, args, kwargs, wants_reporter = message
        try:
            if failed is not None:
                raise failed
            if wants_reporter:
                kwargs = {**kwargs, "reporter": _PipeReporter(conn)}
            result = func(*args, **kwargs)
        except Exception as exc:
            conn.send(("error", _sendable(exc), None))
        else:
            conn.send(("ok", result, None))


def _sendable(exc: Exception) -> Exception:
    """The exception itself when the parent can rebuild it (pickling an exception sends its
    class and args, and the parent calls the class with them), else an EngineProcessError
    with its text and traceback."""
    try:
        type(exc)(*exc.args)
        return exc
    except Exception:
        text = "".join(traceback.format_exception(exc)).rstrip()
        return EngineProcessError(f"{type(exc).__name__}: {exc}\n{text}")
