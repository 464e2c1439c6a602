"""Component extraction: selected parts saved with their origin and signatures."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from apps.assembly.engine.component_extract import SelectionError, extract_components, select
from apps.registry.engine.components import catalogue
from apps.registry.engine.model import read_model
from tests.registry.zoo import llama_like


@pytest.fixture
def model(tmp_path):
    return llama_like(tmp_path / "m", layers=4)


def test_layer_range_and_head_with_origin_and_signatures(model, tmp_path):
    record = extract_components(model, ["layers 1-2", "head"], tmp_path / "c")
    assert [c["id"] for c in record["components"]] == ["model.layers.1", "model.layers.2", "head"]
    stored = load_file(str(tmp_path / "c" / "model.safetensors"))
    source = load_file(str(model / "model.safetensors"))
    assert set(stored) == {n for c in record["components"] for n in c["tensors"]}
    for name, value in stored.items():
        np.testing.assert_array_equal(value, source[name])
    saved = json.loads((tmp_path / "c" / "component.json").read_text())
    sigs = {c.id: c.signature for c in catalogue(read_model(model))}
    assert saved["components"][0]["signature"] == sigs["model.layers.1"] == sigs["model.layers.2"]
    assert saved["origin"] == str(model)


def test_exact_ids_and_named_stack_ranges(model):
    comps = catalogue(read_model(model))
    assert [c.id for c in select(comps, ["model.layers.3.mlp"])] == ["model.layers.3.mlp"]
    assert [c.id for c in select(comps, ["model.layers.0-1", "0"])] == ["model.layers.0", "model.layers.1"]


@pytest.mark.parametrize(("selection", "message"), [
    (["layers 2-9"], r"layers \[4, 5, 6, 7, 8, 9\] are not in the model \(it has 0-3\)"),
    (["wings"], "not a component id"),
])
def test_bad_selections_are_named_and_nothing_is_written(model, tmp_path, selection, message):
    with pytest.raises(SelectionError, match=message):
        extract_components(model, selection, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert not list(tmp_path.glob(".c.tmp-*"))
