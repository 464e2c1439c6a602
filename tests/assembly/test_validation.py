"""Validation: the result against its parents on the same texts, samples, gates."""

import pytest

from apps.assembly.engine.executor import execute
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
from apps.assembly.engine.validation import default_texts, validate
from apps.registry.engine.demo_models import make_llama_family


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("v")
    family = make_llama_family(root / "family")
    recipe = parse_recipe("merge_method: linear\nmodels:\n  - model: even\n    parameters: {weight: 0.5}\n"
                          "  - model: late\n    parameters: {weight: 0.5}\n")
    paths = {"even": family["tune-even"], "late": family["tune-late"]}
    execute(make_plan(recipe, lambda r: paths[r]), root / "out")
    return root / "out", paths


def test_losses_side_by_side_samples_and_a_passing_gate(merged):
    out, parents = merged
    report = validate(out, parents, max_samples=6, prompts=["The json module"],
                      gates=[{"metric": "loss_ratio_to_best_parent", "max": 1.2}])
    assert set(report.losses) == {"result", "even", "late"}
    assert all(v > 0 for v in report.losses.values())
    assert report.samples[0]["prompt"] == "The json module" and report.samples[0]["output"]
    assert report.ok and report.gates[0]["value"] == pytest.approx(
        report.losses["result"] / min(report.losses["even"], report.losses["late"]))


def test_a_gate_that_cannot_pass_fails(merged):
    out, parents = merged
    gate = {"metric": "loss_ratio_to_best_parent", "max": 0.01}
    report = validate(out, parents, max_samples=3, gates=[gate])
    assert not report.ok and report.gates[0]["value"] > 0.01


def test_default_texts_are_real_prose_and_stable():
    texts = default_texts(10)
    assert len(texts) == 10 and texts == default_texts(10)
    assert all(len(t) > 80 for t in texts)
