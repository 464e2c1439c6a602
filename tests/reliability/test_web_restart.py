"""The web server killed with -9 and started again while a job runs: the job page, never
reloaded, reconnects its websocket by itself and ends up showing the whole history once,
including what happened while the server was down, and the final state."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import browser  # noqa: F401 - the same chromium fixture as the browser suite
from tests.proc import REPO, audobon, audobon_env, free_port

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 90_000
MAKE_USER = ("from django.contrib.auth import get_user_model; "
             "from audobon_site.login_links import login_link_path; "
             "u = get_user_model().objects.create_superuser('ada', '', 'pw-ada-123456'); "
             "print(login_link_path(u))")


def _start(env: dict, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "audobon_site.cli", *args], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(what: str, predicate, timeout: float = 90, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log.read_text()[-4000:]}" if log else ""))


def _answers(base: str) -> bool:
    """The web server answers /healthz (ok, or degraded: no heavy worker or monitor here)."""
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as err:
        return err.code == 503
    except (urllib.error.URLError, OSError):
        return False


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_the_job_page_reconnects_after_a_web_restart_and_shows_the_full_history(browser, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    env = audobon_env(home)
    res = audobon(env, "shell", "-c", MAKE_USER, timeout=120)  # migrates the fresh home first
    assert res.returncode == 0, res.stderr
    link_path = res.stdout.strip().splitlines()[-1]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "processes.log"
    db = home / "db.sqlite3"

    def events(job_id: int) -> list[tuple[int, str]]:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT id, kind FROM monitoring_jobevent WHERE job_id=? ORDER BY id",
                                (job_id,)).fetchall()

    def status(job_id: int) -> str:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT status FROM monitoring_job WHERE id=?", (job_id,)).fetchone()[0]

    worker = _start(env, log, "run_worker", "--queue", "light")
    web = _start(env, log, "serve", "--port", str(port))
    try:
        _wait("the web server", lambda: _answers(base), log=log)
        # 60 steps of 0.5 s: a metric event each step, a log line every 12.
        res = audobon(env, "jobs", "submit", "selftest", "--spec", '{"steps": 60, "step_seconds": 0.5}')
        assert res.returncode == 0, res.stderr
        job_id = int(res.stdout.strip())

        context = browser.new_context()
        page = context.new_page()
        sockets, loads = [], []
        page.on("websocket", lambda ws: "/ws/jobs/" in ws.url and sockets.append(ws.url))
        page.on("load", lambda _: loads.append(page.url))
        page.goto(base + link_path)
        page.goto(f"{base}/jobs/{job_id}/")
        live = page.locator("#job-live")
        expect(live).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)
        # Wait until events have come over the socket, beyond those the page was rendered with.
        history = page.locator("#job-history li")
        rendered = history.count()
        expect(history.nth(rendered + 2)).to_be_attached(timeout=TIMEOUT_MS)
        assert len(sockets) == 1
        page.evaluate("() => { window.auditMark = 'same document'; }")  # gone if the page reloads
        loads_before = len(loads)

        # kill -9 the web server mid-job; the job goes on and records events meanwhile.
        assert status(job_id) == "running"
        _kill(web)
        assert not _answers(base)
        last_seen = events(job_id)[-1][0]
        _wait("events recorded while the web server is down",
              lambda: sum(1 for eid, kind in events(job_id) if eid > last_seen and kind != "progress") >= 3)
        missed = [eid for eid, kind in events(job_id) if eid > last_seen and kind != "progress"]

        # The same port again: the page reconnects by itself.
        web = _start(env, log, "serve", "--port", str(port))
        _wait("the restarted web server", lambda: _answers(base), log=log)
        expect(live).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
        assert status(job_id) == "succeeded"
        assert len(sockets) >= 2, sockets  # a new websocket, not a reload
        assert page.evaluate("() => window.auditMark") == "same document"
        assert len(loads) == loads_before

        # The whole history, once each, in order: the events sent before the kill, those
        # recorded while the server was down, and the end.
        expect(page.locator("#job-history")).to_contain_text("succeeded")
        ids = page.eval_on_selector_all("#job-history li", "els => els.map(e => e.dataset.eventId)")
        shown = [int(i) for i in ids]
        expected = [eid for eid, kind in events(job_id) if kind != "progress"]
        assert shown == expected, (shown, expected)
        assert set(missed) <= set(shown)
        expect(live).to_have_attribute("data-percent", "100.0")
    finally:
        _kill(web)
        _kill(worker)
