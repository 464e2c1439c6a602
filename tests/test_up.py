"""`audobon up` as a user runs it: real processes, real queues, real signals."""

import json
import os
import signal
import socket
import sqlite3
import stat
import time

import psutil
import pytest

from tests.proc import Up, audobon, audobon_env, free_port, processes_with_home


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_non_loopback_host_is_refused_and_nothing_starts(home):
    res = audobon(audobon_env(home), "up", "--no-browser", "--host", "0.0.0.0")
    assert res.returncode != 0
    assert "--host 0.0.0.0 is not a loopback address" in res.stderr
    assert not (home / "db.sqlite3").exists()
    assert processes_with_home(home) == []


def test_port_in_use_is_named_and_no_child_is_left(home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = audobon(audobon_env(home), "up", "--no-browser", "--port", str(port))
    assert res.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in res.stderr
    assert processes_with_home(home) == []
    assert not (home / "db.sqlite3").exists()


def _job(env, job_id):
    return json.loads(audobon(env, "jobs", "show", str(job_id), "--json").stdout)


def _wait(predicate, timeout=30, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_up_runs_jobs_survives_a_crashed_worker_and_stops_cleanly(home):
    up = Up(home).start()
    try:
        out = "".join(up.lines)
        assert "Created the administrator 'admin' with password: " in out
        assert up.login_link.startswith(f"{up.base}/login/link/")
        status, health = up.health()
        assert status == 200 and health["status"] == "ok"
        assert {w["queue"] for w in health["workers"]["workers"]} == {"heavy", "light"}

        # The embedded default: SQLite in WAL mode, secret key kept private.
        with sqlite3.connect(home / "db.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert stat.S_IMODE(os.stat(home / "secret_key").st_mode) == 0o600

        # A job submitted from the shell runs in the light worker.
        env = up.env
        job_id = int(audobon(env, "jobs", "submit", "selftest", "--spec",
                             '{"steps": 3, "step_seconds": 0.05}').stdout)
        watched = audobon(env, "jobs", "watch", str(job_id))
        assert watched.returncode == 0, watched.stderr
        assert _job(env, job_id)["status"] == "succeeded"

        # kill -9 the heavy worker in the middle of a heavy job: the job becomes
        # interrupted and the supervisor starts a new worker.
        long_id = int(audobon(env, "jobs", "submit", "selftest", "--spec",
                              '{"steps": 200, "step_seconds": 0.1, "queue": "heavy"}').stdout)
        _wait(lambda: _job(env, long_id)["status"] == "running")
        worker = up.child("--queue heavy")
        os.kill(worker.pid, signal.SIGKILL)
        job = _wait(lambda: (j := _job(env, long_id))["status"] != "running" and j)
        assert job["status"] == "interrupted"
        assert "worker is gone" in job["error"] or "stopped" in job["error"]
        new_worker = _wait(lambda: next((p for p in up.children() if "--queue heavy" in
                                         " ".join(p.cmdline()) and p.pid != worker.pid), None))
        assert new_worker.is_running()
        assert "heavy-worker exited with code -9" in "".join(up.lines)
        # The new heavy worker takes jobs again.
        again = int(audobon(env, "jobs", "retry", str(long_id)).stdout)
        _wait(lambda: _job(env, again)["status"] == "running")
        assert _job(env, again)["worker_id"].endswith(f":{new_worker.pid}:heavy")

        # A long heavy job does not delay a light one.
        light_id = int(audobon(env, "jobs", "submit", "selftest", "--spec",
                               '{"steps": 2, "step_seconds": 0}').stdout)
        assert audobon(env, "jobs", "watch", str(light_id)).returncode == 0
        assert _job(env, again)["status"] == "running"

        # SIGTERM stops everything; the running job is left interrupted, not "running".
        children = up.children()
        assert up.stop() == 0
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
        assert processes_with_home(home) == []
        assert _job(env, again)["status"] == "interrupted"
    finally:
        up.stop()


def test_second_start_cleans_up_reuses_the_admin_and_prints_a_new_link(home):
    env = audobon_env(home)
    first = Up(home, env=env).start()
    first.stop()
    # What a killed ingest leaves behind is cleaned before the workers start.
    leftover = home / "store" / "tmp" / "ingest-killed.tmp"
    leftover.write_bytes(b"half a blob")
    second = Up(home, env=env, port=free_port()).start()
    try:
        assert not leftover.exists()
        assert "temporary files of interrupted ingests removed: 1" in "".join(second.lines)
        assert "Created the administrator" not in "".join(second.lines)
        assert second.login_link and second.login_link != first.login_link
    finally:
        second.stop()
