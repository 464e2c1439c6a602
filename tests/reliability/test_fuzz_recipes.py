"""Fuzzing recipes from parsing to planning: random YAML trees in the recipe's vocabulary,
and valid recipes (ties with gradients and filters, slerp, a passthrough frankenmerge,
linear, graft) with one value replaced, one key dropped or added, or a few characters
edited. Planned against three tiny registered models, as the browser plans
(`recipe_plan(web=True)`), and posted to the plan and gradient panels.

The property: a Plan, or RecipeError/PlanError with a message for the user, never another
exception; every answer within a second; the panels always answer 200, and a plan request
changes nothing in the library.

Budget: 720 derandomized cases in four tests (times AUDOBON_FUZZ_EXAMPLES, see
tests/reliability/conftest.py).
"""

from __future__ import annotations

import copy
import random
import time

import pytest
import yaml
from django.urls import reverse
from hypothesis import event, given
from hypothesis import strategies as st

from apps.assembly.engine.plan import PlanError
from apps.assembly.engine.recipe import Recipe, RecipeError, parse_recipe
from apps.assembly.services import recipe_plan
from apps.assets import services as asset_services
from apps.assets.models import Asset, AssetVersion
from apps.monitoring.models import Job
from tests.registry.zoo import llama_like

from .conftest import fuzz

SECONDS = 1.0

VALID = {
    "ties": """
models:
  - model: a
    parameters: {density: [1, 0.7, 0.1], weight: 1.0}
  - model: b
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: c
    parameters:
      density: 0.33
      weight: [{filter: mlp, value: 0.5}, {value: 0}]
merge_method: ties
base_model: c
parameters: {normalize: true, int8_mask: true}
dtype: float16
""",
    "slerp": """
slices:
  - sources:
      - {model: a, layer_range: [0, 2]}
      - {model: b, layer_range: [0, 2]}
merge_method: slerp
base_model: a
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 1]}
    - value: 0.5
dtype: bfloat16
""",
    "passthrough": """
slices:
  - sources: [{model: a, layer_range: [0, 2]}]
  - sources:
    - model: b
      layer_range: [1, 2]
      parameters:
        scale: [{filter: layers.1., value: 0.5}, {value: 1.0}]
merge_method: passthrough
dtype: float16
""",
    "linear": """
merge_method: linear
models:
  - {model: a, parameters: {weight: 0.5}}
  - {model: b, parameters: {weight: 0.5}}
dtype: float32
validation:
  max_samples: 8
  gates: [{metric: loss_ratio_to_best_parent, max: 1.2}]
  samples: ["The json module"]
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: c
models:
  - {model: a, parameters: {weight: [0.2, 0.8]}}
  - {model: b, parameters: {weight: 1}}
tokenizer: {source: union}
""",
}
KEYS = ["merge_method", "models", "model", "parameters", "weight", "density", "t", "base_model", "slices",
        "sources", "layer_range", "dtype", "tokenizer", "source", "filter", "value", "graft", "component",
        "from", "validation", "gates", "metric", "max", "samples", "normalize", "scale", "epsilon",
        "lambda", "tokens", "out_dtype", "name", "x", ""]
METHODS = ["linear", "slerp", "ties", "dare_ties", "task_arithmetic", "model_stock", "passthrough", "della",
           "nuslerp", "karcher", "breadcrumbs", "sce", "arcee_fusion", "nearswap", "bogus"]
WEIRD = [None, True, -1, 0, 1, 2, 0.5, -0.5, 1e308, float("inf"), float("nan"), 2**63, 10**30, "", "a",
         "b", "c", "asset:a@1", "a@99", "/etc", "../a", "org/ghost", "float16", "int8", [], {}, [0, 1],
         [1, 0], [0, 10**9], [[0]], {"filter": "mlp", "value": 0.5}, ["x", 1], "\x00", "é" * 3]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(),
                    st.text(max_size=8), st.sampled_from(METHODS), st.sampled_from(["a", "b", "c", "ghost"]))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=25)


def dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def paths(node, here=()):
    yield here
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*here, i))


def mutate(text: str, rng: random.Random) -> str:
    """One value replaced, a key dropped or added, or characters edited."""
    kind = rng.randrange(4)
    if kind == 3:
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            chars[at:at + rng.randint(0, 2)] = rng.choice(["", ":", "-", "[", "]", "{", " ", "\n", "&a", "*a",
                                                           "0", "9" * 30, "\t", "'"])
        return "".join(chars)
    data = yaml.safe_load(text)
    target = rng.choice([p for p in paths(data) if p])
    parent = data
    for step in target[:-1]:
        parent = parent[step]
    last = target[-1]
    if kind == 0:
        parent[last] = copy.deepcopy(rng.choice([*WEIRD, rng.choice(METHODS)]))
    elif kind == 1:
        del parent[last]
    elif isinstance(parent, dict):
        parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(WEIRD))
    else:
        parent.insert(last, copy.deepcopy(rng.choice(WEIRD)))
    return dump(data)


recipes = st.one_of(
    trees.map(dump),
    st.tuples(st.sampled_from(sorted(VALID)), st.integers(0, 2**32 - 1), st.integers(1, 3)).map(
        lambda c: _mutated(*c)),
    st.sampled_from(sorted(VALID)).map(VALID.get))


def _mutated(name: str, seed: int, times: int) -> str:
    rng = random.Random(seed)
    text = VALID[name]
    for _ in range(times):
        try:
            text = mutate(text, rng)
        except (yaml.YAMLError, TypeError, IndexError, KeyError, AttributeError):
            break  # the text is no longer YAML (or no longer a tree): use it as it is
    return text


@pytest.fixture
def models(db, tmp_path):
    """Three tiny Llama models in the library, as a, b and c."""
    for i, name in enumerate("abc"):
        folder = llama_like(tmp_path / name, seed=i)
        asset_services.asset_import(source=folder, kind="model", name=name)
    return tmp_path


def library_state() -> tuple:
    return (Asset.objects.count(), AssetVersion.objects.count(), Job.objects.count())


@fuzz(300)
@given(text=recipes)
def test_fuzz_parse_recipe(text):
    started = time.monotonic()
    try:
        recipe = parse_recipe(text)
    except RecipeError as err:
        assert str(err).strip() and err.problems, err
        event("refused")
    else:
        assert isinstance(recipe, Recipe)
        event("parsed")
    assert time.monotonic() - started < SECONDS


@fuzz(300)
@given(text=recipes)
def test_fuzz_plan_as_the_browser_plans(models, text):
    before = library_state()
    started = time.monotonic()
    try:
        plan = recipe_plan(text, web=True)
    except (RecipeError, PlanError) as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
    else:
        plan.to_json()
        event("planned")
    assert time.monotonic() - started < SECONDS
    assert library_state() == before


@fuzz(60)
@given(text=recipes)
def test_fuzz_plan_panel(client, user, models, text):
    client.force_login(user)
    before = library_state()
    started = time.monotonic()
    page = client.post(reverse("assembly:plan"), {"recipe": text})
    assert time.monotonic() - started < SECONDS
    assert page.status_code == 200
    assert library_state() == before


@fuzz(60)
@given(text=recipes, path=st.one_of(st.sampled_from(["parameters.t", "models[1].parameters.weight",
                                                     "models[0].parameters.density", "models[9].x", ""]),
                                     st.text(max_size=12)),
       row=st.sampled_from(["0", "1", "-1", "x", "", "99999999999999999999"]),
       op=st.sampled_from(["set", "add", "remove", "bogus"]),
       values=st.lists(st.sampled_from(["0", "0.5", "1", "-1", "nan", "inf", "1e999", "x", "", "0" * 400]),
                       max_size=6))
def test_fuzz_gradient_panel(client, user, models, text, path, row, op, values):
    client.force_login(user)
    started = time.monotonic()
    page = client.post(reverse("assembly:gradient"), {"recipe": text, "path": path, "row": row, "op": op,
                                                      f"v-{row}": values})
    assert time.monotonic() - started < SECONDS
    assert page.status_code == 200


def test_the_valid_recipes_plan(models):
    """The seeds of the mutations are good recipes: mutations start from a plan that works."""
    for name, text in VALID.items():
        assert recipe_plan(text, web=True).outputs, name
