"""Whole recipes against mergekit-yaml 0.1.5, every tensor bit for bit.

The cases cross every parameter form (a scalar, a gradient list, filters with a fallback)
with every place a parameter can be set (per model, top-level, per slice: on a slice's
source and on the slice itself), for each deterministic merge method, with and without a
base model where the method allows both, on a family with untied and one with tied
embeddings. Every recipe merges the whole model, so every tensor kind is compared:
the embedding, attention, MLP, the norms inside the layers, the final norm and the head.
mergekit runs all recipes in one process of its own venv (tests/assembly/mergekit_recipes.py).

The random methods (dare_*, della*) are compared tensor by tensor, with the same draws, in
test_methods_vs_mergekit.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file
from safetensors.torch import load_file

from apps.assembly.engine.executor import execute
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
from tests.registry.zoo import llama_like

MERGEKIT_PYTHON = os.environ.get("AUDOBON_MERGEKIT_PYTHON", "")
DRIVER = Path(__file__).with_name("mergekit_recipes.py")
LAYERS = 4

pytestmark = pytest.mark.skipif(
    not MERGEKIT_PYTHON,
    reason="AUDOBON_MERGEKIT_PYTHON is not set: point it at the python of a venv with mergekit==0.1.5",
)


def _family(root: Path, *, tied: bool) -> dict[str, Path]:
    base = llama_like(root / "base", layers=LAYERS, seed=10)
    out = {"base": base}
    for i in (1, 2, 3):
        out[f"m{i}"] = llama_like(root / f"m{i}", layers=LAYERS, seed=10 + i, base=base, scale=0.2)
    if tied:  # no head of its own: the embedding is the head
        for folder in out.values():
            tensors = load_np(str(folder / "model.safetensors"))
            del tensors["lm_head.weight"]
            save_file(tensors, str(folder / "model.safetensors"))
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return out


def _form(form: str, lo: float, hi: float) -> Any:
    if form == "scalar":
        return lo
    if form == "gradient":
        return [lo, round((lo + hi) / 2, 3), hi]
    # filters: attention gets a scalar, the MLP a gradient, everything else the fallback
    return [{"filter": "self_attn", "value": hi}, {"filter": "mlp", "value": [lo, hi]}, {"value": lo}]


# method: (models, base: "yes" | "no" | "both", {parameter: (lo, hi)}, per-model parameters?)
METHODS: dict[str, tuple[list[str], str, dict[str, tuple[float, float]], bool]] = {
    "linear": (["m1", "m2", "m3"], "both", {"weight": (0.2, 0.9)}, True),
    "task_arithmetic": (["m1", "m2"], "yes", {"weight": (0.3, 1.0)}, True),
    "ties": (["m1", "m2", "m3"], "yes", {"weight": (0.3, 0.9), "density": (0.3, 0.8)}, True),
    "breadcrumbs": (["m1", "m2"], "yes", {"weight": (0.5, 1.0), "density": (0.6, 0.9),
                                          "gamma": (0.05, 0.2)}, True),
    "breadcrumbs_ties": (["m1", "m2"], "yes", {"weight": (0.5, 1.0), "density": (0.6, 0.9),
                                               "gamma": (0.05, 0.2)}, True),
    "nuslerp": (["m1", "m2"], "both", {"weight": (0.2, 0.7)}, True),
    "slerp": (["m1"], "yes", {"t": (0.2, 0.8)}, False),
    "model_stock": (["m1", "m2", "m3"], "yes", {}, False),
}


def _values(params: dict[str, tuple[float, float]], form: str, shift: float) -> dict[str, Any]:
    return {k: _form(form, round(lo + shift, 3), round(hi - shift, 3)) for k, (lo, hi) in params.items()}


def _recipe(method: str, form: str, place: str, with_base: bool) -> dict:
    models, _, params, per_model = METHODS[method]
    models = (["base"] if with_base and method in ("linear",) else []) + models
    recipe: dict[str, Any] = {"merge_method": method, "dtype": "bfloat16"}
    if with_base:
        recipe["base_model"] = "base"
    if place == "slices":
        halves = [(0, LAYERS // 2), (LAYERS // 2, LAYERS)]
        slices = []
        for n, (start, end) in enumerate(halves):
            sources = []
            for m in ["base"] if with_base and "base" not in models else []:
                sources.append({"model": m, "layer_range": [start, end]})
            for i, m in enumerate(models):
                source: dict[str, Any] = {"model": m, "layer_range": [start, end]}
                if per_model and params and n == 0:  # the first slice sets them per source
                    source["parameters"] = _values(params, form, 0.05 * i)
                sources.append(source)
            entry: dict[str, Any] = {"sources": sources}
            if params and (n == 1 or not per_model):  # the second slice on the slice itself
                entry["parameters"] = _values(params, form, 0.03 * n)
            slices.append(entry)
        recipe["slices"] = slices
        return recipe
    entries = []
    for i, m in enumerate(models):
        entry = {"model": m}
        if per_model and params and place == "models":
            entry["parameters"] = _values(params, form, 0.05 * i)
        entries.append(entry)
    recipe["models"] = entries
    if params and (place == "top" or not per_model):
        recipe["parameters"] = _values(params, form, 0.0)
    return recipe


def _cases() -> list[tuple[str, dict]]:
    cases = []
    for method, (_, base, params, _) in METHODS.items():
        bases = {"yes": [True], "no": [False], "both": [True, False]}[base]
        forms = ["scalar", "gradient", "filters"] if params else ["scalar"]
        places = ["models", "top", "slices"] if params else ["models", "slices"]
        for with_base in bases:
            for form in forms:
                for place in places:
                    name = f"{method}-{form}-{place}-{'base' if with_base else 'nobase'}"
                    cases.append((name, _recipe(method, form, place, with_base)))
    cases.append(("passthrough-gradient-scale", {
        "merge_method": "passthrough", "dtype": "bfloat16",
        "slices": [{"sources": [{"model": "m1", "layer_range": [0, 2]}]},
                   {"sources": [{"model": "m2", "layer_range": [1, 4],
                                 "parameters": {"scale": [{"filter": "o_proj", "value": [0.5, 1.5]},
                                                          {"value": 1.0}]}}]}]}))
    return cases


def _paths(data: Any, family: dict[str, Path]) -> Any:
    if isinstance(data, dict):
        return {k: (str(family[v]) if k in ("model", "base_model") and v in family else _paths(v, family))
                for k, v in data.items()}
    if isinstance(data, list):
        return [_paths(v, family) for v in data]
    return data


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_every_parameter_form_and_tensor_bit_identical_to_mergekit(tmp_path, tied):
    family = _family(tmp_path / "family", tied=tied)
    cases = _cases()
    jobs = [{"id": name, "yaml": yaml.safe_dump(_paths(recipe, family), sort_keys=False),
             "out": str(tmp_path / "mk" / name)} for name, recipe in cases]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([MERGEKIT_PYTHON, str(DRIVER), str(tmp_path / "jobs.json")], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    theirs_failed = json.loads(done.stdout.strip().splitlines()[-1])

    problems, tensors_compared = [], 0
    for name, recipe in cases:
        text = yaml.safe_dump(recipe, sort_keys=False)
        try:
            plan = make_plan(parse_recipe(text), lambda ref: family[ref])
            execute(plan, tmp_path / "ours" / name, recipe_text=text, device="cpu")
        except Exception as exc:  # compared with mergekit's outcome below
            ours_error = f"{type(exc).__name__}: {exc}"
        else:
            ours_error = None
        if theirs_failed[name] or ours_error:
            problems.append(f"{name}: mergekit {theirs_failed[name] or 'merged'}; "
                            f"audobon {ours_error or 'merged'}")
            continue
        ours, theirs = _tensors(tmp_path / "ours" / name), _tensors(tmp_path / "mk" / name)
        if set(ours) != set(theirs):
            problems.append(f"{name}: tensors differ: only ours {sorted(set(ours) - set(theirs))}, "
                            f"only mergekit's {sorted(set(theirs) - set(ours))}")
            continue
        for tensor, t in theirs.items():
            tensors_compared += 1
            if ours[tensor].dtype != t.dtype or not torch.equal(ours[tensor], t):
                same_shape = ours[tensor].shape == t.shape
                diff = (ours[tensor].float() - t.float()).abs().max().item() if same_shape else "shape"
                problems.append(f"{name}: {tensor} differs (max abs {diff})")
    print(f"\n{len(cases)} recipes ({'tied' if tied else 'untied'} embeddings), {tensors_compared} tensors "
          f"compared with mergekit 0.1.5: {tensors_compared - len(problems)} bit-identical")
    assert not problems, "\n".join(problems[:60])
