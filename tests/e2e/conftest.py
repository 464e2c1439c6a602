"""A real `audobon up` per backend, and Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.proc import Up, audobon_env

CHROMIUM = os.environ.get("AUDOBON_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
PG_URL = os.environ.get("AUDOBON_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("AUDOBON_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


@pytest.fixture(params=[
    pytest.param("embedded", marks=pytest.mark.e2e),
    pytest.param("lan", marks=[pytest.mark.e2e, pytest.mark.lan]),
])
def server(request, tmp_path):
    """`audobon up` on SQLite + the embedded queue, or on PostgreSQL + Redis."""
    home = tmp_path / "home"
    extra = {}
    dbname = None
    if request.param == "lan":
        import psycopg
        import redis

        dbname = f"audobon_e2e_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        redis.Redis.from_url(REDIS_URL).flushdb()
        extra = {"AUDOBON_DATABASE_URL": f"{PG_URL}/{dbname}", "AUDOBON_REDIS_URL": REDIS_URL}
    up = Up(home, env=audobon_env(home, **extra)).start()
    up.backend = request.param
    yield up
    up.stop()
    # Shown by pytest only when the test failed.
    print("---- audobon up output ----\n" + "".join(up.lines[-200:]))
    if dbname:
        import psycopg

        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
