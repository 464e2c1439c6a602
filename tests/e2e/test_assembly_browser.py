"""Assembly's main flow in a real browser: write a recipe over the demo fine-tunes and see
the plan follow the typing, run it and watch the progress, open the result with its
validation and lineage."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.proc import audobon

TIMEOUT_MS = 120_000

RECIPE = """merge_method: linear
models:
  - model: demo-llama-tune-even
    parameters: {weight: 0.4}
  - model: demo-llama-tune-late
    parameters: {weight: 0.6}
validation:
  max_samples: 4
  gates: [{metric: loss_ratio_to_best_parent, max: 1.5}]
  samples: ["The json module"]
"""


def test_recipe_plan_run_result(server, browser):
    assert audobon(server.env, "demo_models", timeout=300).returncode == 0
    page = browser.new_context().new_page()
    page.goto(server.login_link)
    page.goto(server.base + "/assembly/")
    editor = page.locator("#recipe-text")

    # A typo: the plan panel names it; fixed: the plan comes back.
    editor.fill(RECIPE.replace("merge_method: linear", "merge_method: linaer"))
    expect(page.locator("#plan-problems")).to_contain_text("linaer", timeout=TIMEOUT_MS)
    editor.fill(RECIPE)
    expect(page.locator("#plan-facts")).to_contain_text("linear", timeout=TIMEOUT_MS)
    expect(page.locator("#plan-outputs")).to_contain_text("4 layers")

    # A gradient: its points are edited on the page; the recipe and the plot follow.
    editor.fill(RECIPE.replace("{weight: 0.6}", "{weight: [0.2, 0.6]}"))
    row = page.locator('.gradient-row[data-path="models.1.parameters.weight"]')
    expect(row).to_contain_text("model demo-llama-tune-late", timeout=TIMEOUT_MS)
    row.get_by_label("point 2 of 2").fill("0.9")
    row.get_by_label("point 2 of 2").press("Tab")
    expect(editor).to_have_value(re.compile(r"weight: \[0\.2, 0\.9\]"), timeout=TIMEOUT_MS)
    expect(page.locator("#gradient-chart svg")).to_be_visible()
    page.locator('.gradient-row[data-path="models.1.parameters.weight"] button', has_text="+ point").click()
    expect(editor).to_have_value(re.compile(r"weight: \[0\.2, 0\.55, 0\.9\]"), timeout=TIMEOUT_MS)
    expect(page.locator('.gradient-row[data-path="models.1.parameters.weight"] input')).to_have_count(3)

    page.fill("#result-name", "even-late-mix")
    page.click("#run-recipe")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    live = page.locator("#job-live")
    expect(live).to_have_attribute("data-status", "succeeded", timeout=TIMEOUT_MS)
    expect(page.locator("#job-history")).to_contain_text("linear:")

    page.goto(server.base + "/library/a/even-late-mix/")
    expect(page.locator("#validation")).to_contain_text("gates passed")
    expect(page.locator("#validation")).to_contain_text("demo-llama-tune-late")
    lineage = page.locator("svg.lineage")
    expect(lineage).to_contain_text("demo-llama-tune-even@1")
    expect(lineage).to_contain_text("even-late-mix@1")
