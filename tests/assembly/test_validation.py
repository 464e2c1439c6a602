"""Validation: the result against its parents on the same texts, samples, gates."""

import pytest

from apps.assembly.engine.executor import execute
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
from apps.assembly.engine.validation import default_texts, validate
from apps.registry.engine.demo_models import make_llama_family


def _merge(root, extra: str = ""):
    family = make_llama_family(root / "family")
    recipe = parse_recipe("merge_method: linear\nmodels:\n  - model: even\n    parameters: {weight: 0.5}\n"
                          "  - model: late\n    parameters: {weight: 0.5}\n" + extra)
    paths = {"even": family["tune-even"], "late": family["tune-late"]}
    execute(make_plan(recipe, lambda r: paths[r]), root / "out")
    return root / "out", paths


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    return _merge(tmp_path_factory.mktemp("v"))


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


@pytest.fixture(scope="module")
def merged_bf16(tmp_path_factory):
    return _merge(tmp_path_factory.mktemp("vb"), "dtype: bfloat16\n")


def test_each_model_is_evaluated_in_its_stored_dtype(merged_bf16):
    from safetensors import safe_open

    out, parents = merged_bf16
    report = validate(out, parents, max_samples=2)
    assert report.dtypes["result"] == "bfloat16"  # never a float32 copy of a bf16 result
    with safe_open(str(next(parents["even"].glob("*.safetensors"))), "pt") as f:
        stored = str(f.get_slice(next(iter(f.keys()))).get_dtype())
    assert report.dtypes["even"] == {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[stored]
    assert report.skipped == {} and report.to_json()["device"] == "cpu"


def test_the_predicted_need_is_the_weights_plus_the_logits(merged_bf16):
    from apps.assembly.engine.validation import model_memory, validation_memory

    out, parents = merged_bf16
    weights = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    need = model_memory(out, max_tokens=256)
    assert weights < need < weights + 2 * 2**30  # the weights, once, in bf16, plus a bounded rest
    peak = validation_memory(weights, None, parents)
    assert peak["peak"] == max(peak["models"].values()) and set(peak["models"]) == {"result", "even", "late"}


def test_models_that_do_not_fit_the_budget_are_skipped_with_the_numbers(merged):
    from apps.assembly.engine.validation import model_memory

    out, parents = merged
    budget = model_memory(out) - 1  # not even the result fits
    gate = {"metric": "loss_ratio_to_best_parent", "max": 1.5}
    report = validate(out, parents, max_samples=2, memory_budget=budget, gates=[gate])
    assert set(report.skipped) == {"result", "even", "late"}
    assert "GiB to evaluate" in report.skipped["result"] and "available on cpu" in report.skipped["result"]
    assert report.losses["result"] is None and not report.ok
    assert "not measured" in report.gates[0]["why"] and "result: needs" in report.gates[0]["why"]


def test_a_result_without_a_tokenizer_is_noted_without_loading_transformers(merged, tmp_path):
    """Nothing to measure: said in the report, decided from the files before transformers is
    imported (seconds of a command's time spent for nothing otherwise)."""
    import json
    import shutil
    import subprocess
    import sys

    from apps.assembly.engine.validation import TOKENIZER_FILES
    from tests.proc import REPO

    out, parents = merged
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    for name in (*TOKENIZER_FILES, "special_tokens_map.json", "chat_template.jinja"):
        (bare / name).unlink(missing_ok=True)
    script = ("import json, sys\nfrom pathlib import Path\n"
              "from apps.assembly.engine.validation import validate\n"
              "r = validate(Path(sys.argv[1]), {'even': Path(sys.argv[2])})\n"
              "print(json.dumps({'report': r.to_json(), 'transformers': 'transformers' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(bare), str(parents["even"])], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["transformers"] is False
    assert got["report"]["losses"] == {"result": None, "even": None}
    assert any("no tokenizer to evaluate with" in n for n in got["report"]["notes"])
