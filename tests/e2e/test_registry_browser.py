"""The registry's main flow in a real browser: scan a folder, open a model's component
tree, compare two models, run a diff and see its heatmap."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.registry.zoo import llama_like

TIMEOUT_MS = 60_000


def test_scan_tree_compare_diff(server, browser, tmp_path):
    # The web scans only folders it may read: under the server's home or an import root.
    zoo = server.home / "zoo"
    base = llama_like(zoo / "base")
    llama_like(zoo / "tuned", base=base, scale=0.02, seed=1)
    llama_like(zoo / "wide", hidden=32, seed=2)

    page = browser.new_context().new_page()
    page.goto(server.login_link)
    page.goto(server.base + "/registry/")
    page.fill("#scan-form input[name=path]", str(zoo))
    page.click("#scan-form button")
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)

    page.goto(server.base + "/registry/")
    expect(page.locator("table.models")).to_contain_text("wide")
    page.click("table.models >> text=base")
    expect(page.locator("h1")).to_contain_text("base")

    # The component tree: open a block and see its attention tensors.
    tree = page.locator("#component-tree")
    tree.locator("summary", has_text="layers.0").first.click()
    expect(tree).to_contain_text("model.layers.0.self_attn.q_proj.weight")

    # Compare: a different hidden size cannot be merged, and says why.
    page.select_option("#compare-other", label="wide")
    expect(page.locator("#compat")).to_contain_text("weight merge")
    expect(page.locator("#compat td.no").first).to_be_visible()
    page.select_option("#compare-other", label="tuned")
    expect(page.locator("#compat")).to_contain_text("yes")

    # Diff against the fine-tune: a heavy job, then the heatmap and the table.
    page.select_option("#diff-other", label="tuned")
    page.click("#start-diff")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
    page.goto(page.url.rsplit("/jobs/", 1)[0] + "/registry/")
    page.click("table.models >> text=base")
    page.click("text=diff base vs tuned")
    heatmap = page.locator("#diff-heatmap")
    expect(heatmap).to_be_visible()
    assert page.evaluate("document.querySelector('#diff-heatmap').naturalWidth") > 50
    expect(page.locator("#diff-table")).to_contain_text("model.layers.")
