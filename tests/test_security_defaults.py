"""Secure defaults: login throttling, the Content-Security-Policy, what /healthz tells a
stranger, `check --deploy` in LAN mode, TLS settings, and no unpickling or remote code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.monitoring.models import WorkerHeartbeat

REPO = Path(__file__).resolve().parent.parent
LAN_ENV = {
    "AUDOBON_DATABASE_URL": "postgres://audobon@127.0.0.1:5432/audobon",
    "AUDOBON_REDIS_URL": "redis://127.0.0.1:6379/5",
    "AUDOBON_ALLOWED_HOSTS": "gpu-box.lan,192.168.1.20",
}


# --- login throttling ---------------------------------------------------------------------

def _login(client, username, password, ip):
    return client.post(reverse("login"), {"username": username, "password": password},
                       REMOTE_ADDR=ip)


@pytest.mark.django_db
def test_ten_wrong_passwords_lock_that_username_from_that_address(client, user, django_user_model):
    django_user_model.objects.create_user(username="bob", password="pw-bob-123456")
    for _ in range(9):
        resp = _login(client, "ada", "wrong", "10.0.0.7")
        assert resp.status_code == 200  # the form again, with its error
    locked = _login(client, "ada", "wrong", "10.0.0.7")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed logins" in page and "ada" in page and "audobon axes_reset_username" in page
    # Even the right password is refused now, for that username from that address…
    assert _login(client, "ada", "pw-ada-123456", "10.0.0.7").status_code == 429
    assert "_auth_user_id" not in client.session
    # …but not for another user at the same address, nor for ada elsewhere.
    assert _login(client, "bob", "pw-bob-123456", "10.0.0.7").status_code == 302
    client.logout()
    ok = _login(client, "ada", "pw-ada-123456", "10.0.0.8")
    assert ok.status_code == 302 and ok["Location"] == reverse("monitoring:dashboard")


@pytest.mark.django_db
def test_a_success_clears_earlier_failures(client, user):
    for _ in range(9):
        _login(client, "ada", "wrong", "10.0.0.9")
    assert _login(client, "ada", "pw-ada-123456", "10.0.0.9").status_code == 302
    client.logout()
    for _ in range(9):
        assert _login(client, "ada", "wrong", "10.0.0.9").status_code == 200


@pytest.mark.django_db
def test_the_admin_login_is_throttled_too(client, django_user_model):
    django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    for _ in range(10):
        resp = client.post("/admin/login/", {"username": "root", "password": "x"}, REMOTE_ADDR="10.1.1.1")
    assert resp.status_code == 429


@pytest.mark.django_db
def test_behind_the_tls_proxy_the_forwarded_address_is_counted(client, user, settings):
    settings.AUDOBON_TLS = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    via_proxy = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "https"}
    for _ in range(10):
        # A client cannot pick its address: the proxy appends the real one last.
        resp = client.post(reverse("login"), {"username": "ada", "password": "wrong"},
                           HTTP_X_FORWARDED_FOR="1.2.3.4, 10.9.0.1", **via_proxy)
    assert resp.status_code == 429
    ok = client.post(reverse("login"), {"username": "ada", "password": "pw-ada-123456"},
                     HTTP_X_FORWARDED_FOR="10.9.0.2", **via_proxy)
    assert ok.status_code == 302


# --- Content-Security-Policy ----------------------------------------------------------------

def _policy(resp) -> dict[str, list[str]]:
    header = resp["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in header.split(";")) if d}


@pytest.mark.django_db
def test_every_page_carries_a_strict_content_security_policy(client, user):
    anonymous = client.get(reverse("login"))
    client.force_login(user)
    pages = [anonymous] + [client.get(reverse(name)) for name in (
        "monitoring:dashboard", "monitoring:job_list", "assets:library", "registry:index",
        "assembly:index", "training:index")]
    for resp in pages:
        assert resp.status_code == 200
        policy = _policy(resp)
        assert policy["default-src"] == ["'self'"]
        assert policy["script-src"][0] == "'self'" and policy["style-src"][0] == "'self'"
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        header = resp["Content-Security-Policy"]
        assert "unsafe-inline" not in header and "unsafe-eval" not in header and "*" not in header
        body = resp.content.decode()
        assert '"includeIndicatorStyles": false' in body and '"allowEval": false' in body


TEMPLATES = sorted((REPO / "templates").rglob("*.html"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(REPO / "templates")))
def test_templates_hold_nothing_the_policy_would_block(path):
    text = path.read_text()
    # An inline <script> (one without src) needs the nonce; inline styles and handlers
    # cannot be allowed by one; an htmx trigger filter ([...]) or hx-on needs eval.
    for m in re.finditer(r"<script\b([^>]*)>", text):
        assert "src=" in m.group(1) or 'nonce="{{ CSP_NONCE }}"' in m.group(1), m.group(0)
    assert not re.search(r"<style\b(?![^>]*nonce=)", text)
    assert not re.search(r"\sstyle\s*=", text)
    assert not re.search(r"\son[a-z]+\s*=", text)
    assert not re.search(r"\shx-on[:-]", text)
    assert not re.search(r"javascript:", text)
    assert not re.search(r'hx-trigger="[^"]*\[', text)


# --- /healthz ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_healthz_is_ok_or_degraded_for_strangers_and_detailed_for_users(client, user, settings):
    now = timezone.now()
    for q in ("heavy", "light"):
        WorkerHeartbeat.objects.create(worker_id=f"secret-host:31337:{q}", queue=q, host="secret-host",
                                       pid=31337, started_at=now, last_seen=now)
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok", "ok": True}
    for leak in ("secret-host", "31337", str(settings.AUDOBON_HOME)):
        assert leak not in anonymous.content.decode()
    client.force_login(user)
    detail = client.get("/healthz").json()
    assert detail["status"] == "ok" and detail["disk"]["path"] == str(settings.AUDOBON_HOME)
    assert {w["host"] for w in detail["workers"]["workers"]} == {"secret-host"}


# --- deployment checks and TLS ----------------------------------------------------------------

def _audobon_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AUDOBON_") and k != "DJANGO_SETTINGS_MODULE"}
    return {**env, "AUDOBON_HOME": str(home), "DJANGO_SETTINGS_MODULE": "audobon_site.settings",
            "HF_HUB_OFFLINE": "1", **extra}


@pytest.mark.parametrize("tls", ["0", "1"])
def test_check_deploy_is_clean_in_lan_mode(tmp_path, tls):
    proc = subprocess.run([sys.executable, "-m", "audobon_site.cli", "check", "--deploy"],
                          env=_audobon_env(tmp_path / "home", **LAN_ENV, AUDOBON_TLS=tls),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "System check identified no issues" in proc.stdout, proc.stdout + proc.stderr
    assert "WARNINGS" not in proc.stderr and "ERRORS" not in proc.stderr
    assert not (tmp_path / "home" / "db.sqlite3").exists()


SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({k: getattr(s, k, None) for k in (
    "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER", "SESSION_COOKIE_HTTPONLY", "CSRF_COOKIE_HTTPONLY", "DEBUG")}))
"""


def test_tls_switch_turns_on_secure_cookies_and_hsts(tmp_path):
    def shown(**extra):
        proc = subprocess.run([sys.executable, "-c", SHOW_SETTINGS], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env=_audobon_env(tmp_path / "h", **LAN_ENV, **extra))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    plain = shown()
    assert not plain["SESSION_COOKIE_SECURE"] and not plain["SECURE_HSTS_SECONDS"]
    assert plain["SESSION_COOKIE_HTTPONLY"] and plain["CSRF_COOKIE_HTTPONLY"] and not plain["DEBUG"]
    tls = shown(AUDOBON_TLS="1")
    assert tls["SESSION_COOKIE_SECURE"] and tls["CSRF_COOKIE_SECURE"] and tls["SECURE_SSL_REDIRECT"]
    assert tls["SECURE_HSTS_SECONDS"] >= 30 * 24 * 3600
    assert tls["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


@pytest.mark.django_db
def test_over_tls_the_session_cookie_is_secure_and_hsts_is_sent(client, user, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    settings.SECURE_HSTS_SECONDS = 3600
    assert client.get(reverse("login")).status_code == 301  # plain http goes to https
    assert client.get("/healthz").status_code in (200, 503)  # `audobon up` probes over http
    resp = _login(client, "ada", "pw-ada-123456", "10.2.0.1")
    assert resp.status_code == 301
    resp = client.post(reverse("login"), {"username": "ada", "password": "pw-ada-123456"},
                       HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.2.0.1")
    assert resp.status_code == 302
    assert resp.cookies["sessionid"]["secure"] and resp.cookies["sessionid"]["httponly"]
    assert resp["Strict-Transport-Security"].startswith("max-age=3600")


# --- what is never done ---------------------------------------------------------------------

def test_no_code_unpickles_or_runs_remote_code():
    offenders = []
    for path in sorted((REPO / "apps").rglob("*.py")) + sorted((REPO / "audobon_site").rglob("*.py")):
        text = path.read_text()
        for pattern in (r"\bpickle\.loads?\(", r"\btorch\.load\(", r"trust_remote_code\s*=\s*True",
                        r"\bdill\.", r"\bjoblib\.load\(", r"weights_only\s*=\s*False"):
            offenders += [f"{path.relative_to(REPO)}: {pattern}" for _ in re.finditer(pattern, text)]
    assert offenders == []


def test_the_secret_key_lives_in_the_home_not_the_database_or_the_code(settings):
    key_file = Path(settings.AUDOBON_HOME) / "secret_key"
    assert key_file.read_text().strip() == settings.SECRET_KEY
    assert (key_file.stat().st_mode & 0o077) == 0


# --- in a real browser ------------------------------------------------------------------------

BROWSER_PAGES = ["/", "/jobs/", "/library/", "/library/upload/", "/library/storage/", "/registry/",
                 "/assembly/", "/training/", "/training/runs/new/", "/training/datasets/",
                 "/training/synth/", "/admin/"]


@pytest.mark.e2e
def test_no_page_breaks_the_policy_in_a_browser(tmp_path):
    """Every page in chromium with the policy on: no violation reported, htmx loaded and
    adding no inline style, a job's page live over its websocket, bars drawn."""
    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.proc import Up, audobon

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    up = Up(tmp_path / "home").start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text)
                    if "Content Security Policy" in m.text or "Refused to" in m.text else None)
            frames: list = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
            page.goto(up.login_link)
            expect(page.locator("h1")).to_have_text("Dashboard")
            for path in BROWSER_PAGES:
                resp = page.goto(up.base + path)
                assert resp.status == 200, path
                assert "default-src 'self'" in resp.headers["content-security-policy"]
                page.wait_for_load_state("load")
                if not path.startswith("/admin/"):  # the admin has its own pages, no htmx
                    assert page.evaluate("typeof window.htmx") == "object", path
                assert page.evaluate("document.querySelectorAll('style').length") == 0, path
            job_id = int(audobon(up.env, "jobs", "submit", "selftest", "--spec",
                                 '{"steps": 40, "step_seconds": 0.15}').stdout)
            page.goto(f"{up.base}/jobs/{job_id}/")
            live = page.locator("#job-live")
            expect(live).to_have_attribute("data-status", "succeeded", timeout=60_000)
            assert violations == []
            assert frames, "the job page got nothing over its websocket"
            bar = page.locator("#job-live .bar-fill").bounding_box()
            track = page.locator("#job-live .bar").bounding_box()
            assert bar and track and bar["width"] == pytest.approx(track["width"], abs=2)
            browser.close()
        assert violations == []
    finally:
        up.stop()
