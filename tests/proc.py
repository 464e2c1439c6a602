"""Starting `audobon up` (and other audobon commands) as real subprocesses for tests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def audobon_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for a real `audobon` process: its own home, real queues."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AUDOBON_") and k != "DJANGO_SETTINGS_MODULE"}
    env.update({"AUDOBON_HOME": str(home), "DJANGO_SETTINGS_MODULE": "audobon_site.settings",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "AUDOBON_SAMPLE_SECONDS": "1"})
    env.update(extra)
    return env


def audobon(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audobon_site.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def processes_with_home(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AUDOBON_HOME") == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class Up:
    """`audobon up --no-browser` on a free port, read until it prints its login link."""

    def __init__(self, home: Path, env: dict | None = None, port: int | None = None):
        self.home = home
        self.port = port or free_port()
        self.env = env or audobon_env(home)
        self.base = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.login_link = ""
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Up:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audobon_site.cli", "up", "--no-browser", "--port", str(self.port)],
            env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError("audobon up exited early:\n" + "".join(self.lines))
                continue
            self.lines.append(line)
            if line.startswith("One-time login link: "):
                self.login_link = line.split(": ", 1)[1].strip()
                self.ready_s = time.monotonic() - self.started
                break
        else:
            raise RuntimeError("audobon up did not become ready:\n" + "".join(self.lines))
        # Keep draining its output so the pipe never fills and blocks the children.
        import threading

        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def child(self, name_part: str) -> psutil.Process:
        for p in self.children():
            if name_part in " ".join(p.cmdline()):
                return p
        raise LookupError(name_part)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in processes_with_home(self.home):  # never leave strays behind a failed test
            p.kill()
        return self.proc.returncode


PG_URL = os.environ.get("AUDOBON_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("AUDOBON_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


@contextlib.contextmanager
def lan_backend():
    """A fresh PostgreSQL database and an empty Redis db; yields the AUDOBON_* settings."""
    import uuid

    import psycopg
    import redis

    dbname = f"audobon_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        yield {"AUDOBON_DATABASE_URL": f"{PG_URL}/{dbname}", "AUDOBON_REDIS_URL": REDIS_URL}
    finally:
        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
