"""A real `audobon up` per backend, and Debian's chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.proc import Up, audobon_env, lan_backend

CHROMIUM = os.environ.get("AUDOBON_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(params=[
    pytest.param("embedded", marks=pytest.mark.e2e),
    pytest.param("lan", marks=[pytest.mark.e2e, pytest.mark.lan]),
])
def server(request, tmp_path):
    """`audobon up` on SQLite + the embedded queue, or on PostgreSQL + Redis."""
    home = tmp_path / "home"
    backend = lan_backend() if request.param == "lan" else contextlib.nullcontext({})
    with backend as extra:
        up = Up(home, env=audobon_env(home, **extra)).start()
        up.backend = request.param
        try:
            yield up
        finally:
            up.stop()
            # Shown by pytest only when the test failed.
            print("---- audobon up output ----\n" + "".join(up.lines[-200:]))


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
