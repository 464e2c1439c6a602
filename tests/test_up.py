"""`audobon up` as a user runs it: real processes, real queues, real signals."""

import http.cookiejar
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from audobon_site.hosts import HostRefused, bind_plan
from tests.proc import REPO, Up, audobon, audobon_env, free_port, processes_with_home

LAN_DB = "postgres://audobon@127.0.0.1:5432/audobon"
LAN_REDIS = "redis://127.0.0.1:6379/5"


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_the_host_rule():
    env = {}
    for host in ("127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "[::1]", "localhost"):
        plan = bind_plan(host, env)
        assert not plan.lan and plan.url_host in plan.allowed_hosts
    assert bind_plan("localhost", env).host == "127.0.0.1"
    assert bind_plan("::1", env).url_host == "[::1]" and bind_plan("::1", env).host == "::1"
    lan = {"AUDOBON_DATABASE_URL": LAN_DB, "AUDOBON_REDIS_URL": LAN_REDIS}
    # A specific LAN address is a host name by itself; a wildcard needs the names.
    plan = bind_plan("192.168.77.20", lan)
    assert plan.lan and "192.168.77.20" in plan.allowed_hosts and plan.link_host == "192.168.77.20"
    with pytest.raises(HostRefused, match="AUDOBON_ALLOWED_HOSTS"):
        bind_plan("0.0.0.0", lan)
    plan = bind_plan("0.0.0.0", {**lan, "AUDOBON_ALLOWED_HOSTS": ".lan, gpu-box.lan"})
    assert plan.allowed_hosts == ["127.0.0.1", "localhost", "[::1]", ".lan", "gpu-box.lan"]
    assert plan.probe_host == "127.0.0.1" and plan.link_host == "gpu-box.lan"
    assert bind_plan("::", {**lan, "AUDOBON_ALLOWED_HOSTS": "gpu-box.lan"}).probe_host == "[::1]"
    for url in ("postgresql://u@db/a", "pgsql://u@db/a"):
        assert bind_plan("10.0.0.5", {**lan, "AUDOBON_DATABASE_URL": url}).lan
    with pytest.raises(HostRefused, match="PostgreSQL"):
        bind_plan("10.0.0.5", {**lan, "AUDOBON_DATABASE_URL": "mysql://u@db/a"})


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(("command", "host", "extra", "reason"), [
    ("up", "0.0.0.0", {}, "AUDOBON_DATABASE_URL (a PostgreSQL URL)"),
    ("serve", "0.0.0.0", {}, "AUDOBON_DATABASE_URL (a PostgreSQL URL)"),
    ("up", "0.0.0.0", {"AUDOBON_DATABASE_URL": LAN_DB}, "AUDOBON_REDIS_URL"),
    ("up", "0.0.0.0", {"AUDOBON_DATABASE_URL": LAN_DB, "AUDOBON_REDIS_URL": LAN_REDIS},
     "AUDOBON_ALLOWED_HOSTS (the names"),
    ("serve", "0.0.0.0", {"AUDOBON_DATABASE_URL": "sqlite:////tmp/x.db", "AUDOBON_REDIS_URL": LAN_REDIS,
                          "AUDOBON_ALLOWED_HOSTS": "gpu-box.lan"}, "AUDOBON_DATABASE_URL to be PostgreSQL"),
    ("serve", "192.168.77.20", {"AUDOBON_REDIS_URL": LAN_REDIS}, "AUDOBON_DATABASE_URL (a PostgreSQL URL)"),
    ("up", "gpu-box.lan", {}, "give an IP address (or localhost)"),
])
def test_a_network_host_without_lan_mode_is_refused_at_once(home, command, host, extra, reason):
    port = free_port()
    args = [command, "--host", host, "--port", str(port)]
    res = audobon(audobon_env(home, **extra), *args, *(["--no-browser"] if command == "up" else []),
                  timeout=30)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert reason in res.stderr, res.stderr
    if host != "gpu-box.lan":
        assert f"--host {host} is not a loopback address" in res.stderr
    # Nothing was set up, started or bound.
    assert not (home / "db.sqlite3").exists()
    assert processes_with_home(home) == []
    assert _port_is_free("127.0.0.1", port)


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


def _logged_in_health(login_link: str, url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(login_link, timeout=10) as resp:
        assert resp.status == 200
    with opener.open(url, timeout=10) as resp:
        return json.load(resp)


def test_up_runs_jobs_survives_a_crashed_worker_and_stops_cleanly(home):
    up = Up(home).start()
    try:
        out = "".join(up.lines)
        assert "Created the administrator 'admin' with password: " in out
        assert up.login_link.startswith(f"{up.base}/login/link/")
        # A stranger learns only ok or degraded; the admin, logged in, sees the parts.
        status, health = up.health()
        assert status == 200 and health == {"status": "ok", "ok": True}
        detail = _logged_in_health(up.login_link, f"{up.base}/healthz")
        assert {w["queue"] for w in detail["workers"]["workers"]} == {"heavy", "light"}

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
                              '{"steps": 2000, "step_seconds": 0.1, "queue": "heavy"}').stdout)
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
        # (2000 steps of 0.1 s: it stays running past the light job below even on a loaded machine,
        # and the stop below ends it.)
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


class UpOn(Up):
    """`audobon up --host HOST`, read until it prints its login link."""

    def __init__(self, home, host: str, **kwargs):
        super().__init__(home, **kwargs)
        self.host = host
        self.base = f"http://{host}:{self.port}"

    def start(self, timeout: float = 120):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audobon_site.cli", "up", "--no-browser", "--host", self.host,
             "--port", str(self.port)],
            env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("audobon up exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            if line.startswith("One-time login link: "):
                self.login_link = line.split(": ", 1)[1].strip()
                return self
        raise RuntimeError("audobon up did not become ready:\n" + "".join(self.lines))


def test_any_loopback_address_works_and_is_an_allowed_host(home):
    up = UpOn(home, "127.0.0.2").start()
    try:
        out = "".join(up.lines)
        assert "Audobon is ready at http://127.0.0.2:" in out
        assert up.login_link.startswith(f"http://127.0.0.2:{up.port}/login/link/")
        # The Host header 127.0.0.2 is accepted: no "Invalid HTTP_HOST header" loop.
        status, health = up.health()
        assert status == 200 and health["status"] == "ok"
        detail = _logged_in_health(up.login_link, f"{up.base}/healthz")
        assert detail["database"]["vendor"] == "sqlite"
        # Listening on 127.0.0.2 only.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{up.port}/healthz", timeout=3)
        assert "Invalid HTTP_HOST" not in "".join(up.lines)
    finally:
        up.stop()


@pytest.mark.lan
def test_lan_mode_serves_every_address_under_the_allowed_names(home):
    from tests.proc import lan_backend

    with lan_backend() as extra:
        env = audobon_env(home, **extra, AUDOBON_ALLOWED_HOSTS="gpu-box.lan")
        up = UpOn(home, "0.0.0.0", env=env)
        up.base = f"http://127.0.0.1:{up.port}"
        up.start()
        try:
            out = "".join(up.lines)
            assert up.login_link.startswith(f"http://gpu-box.lan:{up.port}/login/link/")
            assert "without TLS" in out
            status, health = up.health()
            assert status == 200 and health["status"] == "ok"

            def host_status(name):
                req = urllib.request.Request(f"{up.base}/healthz", headers={"Host": name})
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        return resp.status
                except urllib.error.HTTPError as err:
                    return err.code

            assert host_status(f"gpu-box.lan:{up.port}") == 200
            assert host_status("evil.example") == 400
        finally:
            up.stop()
