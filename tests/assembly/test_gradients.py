"""The gradient editor: every list-of-numbers parameter in a recipe is found, and one is rewritten
in place (the rest of the file byte for byte), from the page, the command line or the engine."""

from __future__ import annotations

import html
import json
from io import StringIO

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.assembly.engine.gradients import (
    GradientError,
    find_gradients,
    interpolate,
    parse_points,
    resample,
    set_gradient,
)
from apps.assembly.engine.recipe import evaluate_setting, parse_recipe

RECIPE = """# a layer-wise slerp
merge_method: slerp
base_model: demo-llama-tune-even   # the base
slices:
  - sources:
      - model: demo-llama-tune-even
        layer_range: [0, 4]
      - model: demo-llama-tune-late
        layer_range: [0, 4]
        parameters:
          weight:
            - 0.2
            - 0.8   # ramps up
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - value: 0.5
dtype: float32
"""


def test_every_gradient_is_found_with_where_it_applies():
    found = {g.path: g for g in find_gradients(RECIPE)}
    assert set(found) == {"parameters.t.0.value", "slices.0.sources.1.parameters.weight"}
    t = found["parameters.t.0.value"]
    assert (t.name, t.where, t.values) == ("t", "all models · self_attn", (0, 0.5, 0.3, 0.7, 1))
    w = found["slices.0.sources.1.parameters.weight"]
    assert w.where == "slice 1 · demo-llama-tune-late" and w.values == (0.2, 0.8)
    # layer_range lists and scalar settings are not gradients
    assert not any("layer_range" in p for p in found)


def test_a_flow_list_is_replaced_and_nothing_else_changes():
    edited = set_gradient(RECIPE, "parameters.t.0.value", [1, 0.25, 0])
    assert edited == RECIPE.replace("[0, 0.5, 0.3, 0.7, 1]", "[1.0, 0.25, 0.0]")
    assert parse_recipe(edited).parameters["t"][0].value == [1.0, 0.25, 0.0]


def test_a_block_list_becomes_a_flow_list_and_keeps_its_comment():
    edited = set_gradient(RECIPE, "slices.0.sources.1.parameters.weight", [0.1, 0.5, 0.9])
    assert "weight: [0.1, 0.5, 0.9]   # ramps up" in edited
    assert "# a layer-wise slerp" in edited and "# the base" in edited
    data = yaml.safe_load(edited)
    assert data["slices"][0]["sources"][1]["parameters"]["weight"] == [0.1, 0.5, 0.9]
    assert data["parameters"] == yaml.safe_load(RECIPE)["parameters"]


def test_resampling_keeps_the_curve():
    values = [0.0, 1.0, 0.0]
    five = resample(values, 5)
    assert five == [0.0, 0.5, 1.0, 0.5, 0.0]
    for t in (0.0, 0.1, 0.37, 0.5, 0.8, 1.0):
        assert interpolate(five, t) == pytest.approx(interpolate(values, t))
    # the same interpolation the planner applies to each layer
    assert evaluate_setting("model.layers.0.mlp.up_proj.weight", five, 0.25) == pytest.approx(0.5)
    with pytest.raises(GradientError, match="2 to 64 points"):
        resample(values, 1)


@pytest.mark.parametrize(("path", "values", "message"), [
    ("parameters.nope", [0, 1], "no gradient at 'parameters.nope'"),
    ("parameters.t.0.value", [1], "2 to 64 points"),
    ("parameters.t.0.value", [0, float("nan")], "not a finite number"),
])
def test_bad_edits_are_refused(path, values, message):
    with pytest.raises(GradientError, match=message):
        set_gradient(RECIPE, path, values)


def test_typed_points_are_checked_one_by_one():
    assert parse_points(["0", " 0.5", "1e-1"]) == [0.0, 0.5, 0.1]
    with pytest.raises(GradientError, match="point 2: 'x' is not a number"):
        parse_points(["0", "x", "1"])
    with pytest.raises(GradientError, match="point 1: '' is not a number"):
        parse_points([""])


def test_the_command_lists_sets_and_resamples_in_place(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    out = StringIO()
    call_command("recipe_gradients", str(path), "--json", stdout=out)
    assert {g["path"] for g in json.loads(out.getvalue())} == {"parameters.t.0.value",
                                                               "slices.0.sources.1.parameters.weight"}
    call_command("recipe_gradients", str(path), "--points", "slices.0.sources.1.parameters.weight=3",
                 stdout=StringIO())
    assert "weight: [0.2, 0.5, 0.8]   # ramps up" in path.read_text()
    call_command("recipe_gradients", str(path), "--set", "parameters.t.0.value=1,0", stdout=StringIO())
    assert "value: [1.0, 0.0]" in path.read_text()
    before = path.read_text()
    with pytest.raises(CommandError, match="point 2: 'x' is not a number"):
        call_command("recipe_gradients", str(path), "--set", "parameters.t.0.value=1,x")
    with pytest.raises(CommandError, match=r"no gradient at 'parameters\.w'"):
        call_command("recipe_gradients", str(path), "--set", "parameters.w=1,2")
    assert path.read_text() == before  # a refused edit leaves the file as it was
    assert [p.name for p in tmp_path.iterdir()] == ["r.yaml"]  # no temporary left behind


@pytest.mark.django_db
def test_the_editor_page_edits_a_gradient_and_the_plan_follows(client, user, fresh_library):
    from apps.registry import services as registry_services

    registry_services.demo_models_register()
    client.force_login(user)
    page = client.get(reverse("assembly:index"), {
        "method": "slerp", "models": ["demo-llama-tune-even", "demo-llama-tune-late"],
        "base": "demo-llama-tune-even"}).content.decode()
    assert 'class="gradient-row" data-path="parameters.t"' in page
    text = html.unescape(page.split('id="recipe-text"', 1)[1].split(">", 1)[1].split("</textarea>", 1)[0])
    resp = client.post(reverse("assembly:gradient"), {
        "recipe": text, "path": "parameters.t", "row": "0", "op": "set",
        "v-0": ["0.1", "0.9", "0.2"]}).content.decode()
    assert 'id="plan-panel"' in resp and 'hx-swap-oob="true"' in resp
    assert "t: [0.1, 0.9, 0.2]  # a gradient across the layers" in html.unescape(resp)
    assert 'value="0.9"' in resp and 'id="gradient-chart"' in resp

    more = client.post(reverse("assembly:gradient"), {
        "recipe": text, "path": "parameters.t", "row": "0", "op": "add",
        "v-0": ["0", "0.5", "1"]}).content.decode()
    assert "t: [0.0, 0.333333, 0.666667, 1.0]" in html.unescape(more)

    bad = client.post(reverse("assembly:gradient"), {
        "recipe": text, "path": "parameters.t", "row": "0", "op": "set",
        "v-0": ["0.1", "oops", "0.2"]}).content.decode()
    assert "point 2: &#x27;oops&#x27; is not a number" in bad
    assert "t: [0.0, 0.5, 1.0]" in html.unescape(bad)  # the recipe is left as it was
