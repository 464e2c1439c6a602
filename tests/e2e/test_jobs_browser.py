"""The foundation's main flow in a real browser: log in through the one-time link, run a
self-test and watch it reach 100% over the websocket, reload mid-run and see the
history, cancel a second job."""

from __future__ import annotations

import re

from playwright.sync_api import expect

TIMEOUT_MS = 45_000


def _percent(page) -> float:
    return float(page.locator("#job-live").get_attribute("data-percent"))


def test_selftest_live_progress_reload_and_cancel(server, browser, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    frames = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))

    # Logged in straight from the link `audobon up` printed.
    page.goto(server.login_link)
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator(".who")).to_contain_text("admin")

    # Start a self-test from the dashboard form.
    page.fill("#id_steps", "25")
    page.fill("#id_step_seconds", "0.2")
    page.click("#selftest-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    job_url = page.url
    live = page.locator("#job-live")
    expect(live).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)

    # The bar moves without a reload: updates arrive over the websocket.
    # A function, not an expression string: Playwright evals a string in the page, which the
    # Content-Security-Policy (no 'unsafe-eval') refuses.
    page.wait_for_function("() => Number(document.querySelector('#job-live').dataset.percent) >= 20",
                           timeout=TIMEOUT_MS)
    assert frames, "no websocket frame received"

    # Reload mid-run: the whole history so far is on the page.
    before = _percent(page)
    assert before < 100
    page.reload()
    expect(page.locator("#job-history")).to_contain_text("selftest: 25 steps of 0.2s")
    expect(page.locator("#job-history")).to_contain_text("running")
    assert _percent(page) >= before
    history_lines = page.locator("#job-history li").count()
    assert history_lines >= 3

    # …and then it runs to 100% over the websocket, history growing as it goes.
    frames.clear()
    expect(live).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
    expect(live).to_have_attribute("data-percent", "100.0")
    expect(page.locator("#job-percent")).to_have_text("100.0%")
    assert frames, "the end did not come over the websocket"
    assert page.locator("#job-history li").count() > history_lines
    expect(page.locator("#job-history")).to_contain_text("succeeded")
    # Exactly one copy of each event, however it arrived.
    ids = page.eval_on_selector_all("#job-history li", "els => els.map(e => e.dataset.eventId)")
    assert len(ids) == len(set(ids))
    page.screenshot(path=str(tmp_path / f"job-{server.backend}.png"), full_page=True)

    # A second, long job: cancel it from its page.
    page.goto(server.base + "/")
    page.fill("#id_steps", "500")
    page.fill("#id_step_seconds", "0.2")
    page.click("#selftest-form button[type=submit]")
    expect(page).not_to_have_url(job_url)
    expect(live).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)
    page.click("#cancel-job")
    expect(page.locator(".messages")).to_contain_text("cancel requested")
    expect(live).to_have_attribute("data-status", "cancelled", timeout=TIMEOUT_MS)
    assert _percent(page) < 100

    # The jobs page lists both with their final states.
    page.goto(server.base + "/jobs/")
    expect(page.locator("table.jobs")).to_contain_text("succeeded")
    expect(page.locator("table.jobs")).to_contain_text("cancelled")
    context.close()
