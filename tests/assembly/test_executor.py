"""The executor: a plan run into a real Hugging Face model, tensor by tensor."""

import json

import pytest
import torch

from apps.assembly.engine.executor import ExecutionError, execute
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
from apps.registry.engine.demo_models import make_llama_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("demo") / "family")


def _plan(yaml_text, family):
    paths = {"base": family["base"], "even": family["tune-even"], "late": family["tune-late"]}
    return make_plan(parse_recipe(yaml_text), lambda ref: paths[ref])


def _weights(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.state_dict(), model


LINEAR = """
merge_method: linear
models:
  - model: even
    parameters: {weight: 0.25}
  - model: late
    parameters: {weight: 0.75}
dtype: float32
"""


def test_linear_merge_is_a_loadable_model_with_the_expected_weights(family, tmp_path):
    result = execute(_plan(LINEAR, family), tmp_path / "out", recipe_text=LINEAR)
    assert result.tensors > 0 and (tmp_path / "out" / "config.json").is_file()
    merged, model = _weights(tmp_path / "out")
    even, _ = _weights(family["tune-even"])
    late, _ = _weights(family["tune-late"])
    name = "model.layers.2.mlp.up_proj.weight"
    torch.testing.assert_close(merged[name], 0.25 * even[name] + 0.75 * late[name])
    ids = torch.tensor([[1, 2, 3, 4]])
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    card = (tmp_path / "out" / "README.md").read_text()
    assert "linear" in card and "weight: 0.25" in card
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_ties_with_a_base_and_sharded_output(family, tmp_path):
    recipe = """
merge_method: ties
base_model: base
models:
  - model: even
    parameters: {density: 0.5, weight: 1.0}
  - model: late
    parameters: {density: 0.5, weight: 1.0}
parameters: {normalize: true}
dtype: float32
"""
    execute(_plan(recipe, family), tmp_path / "ties", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "ties" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    merged, _ = _weights(tmp_path / "ties")
    base, _ = _weights(family["base"])
    name = "model.layers.3.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], base[name])


def test_passthrough_splice_changes_the_layer_count(family, tmp_path):
    recipe = """
merge_method: passthrough
slices:
  - sources: [{model: base, layer_range: [0, 3]}]
  - sources: [{model: late, layer_range: [2, 4]}]
"""
    execute(_plan(recipe, family), tmp_path / "splice")
    merged, model = _weights(tmp_path / "splice")
    late, _ = _weights(family["tune-late"])
    assert model.config.num_hidden_layers == 5
    torch.testing.assert_close(merged["model.layers.4.mlp.down_proj.weight"],
                               late["model.layers.3.mlp.down_proj.weight"])


def test_random_methods_repeat_with_a_seed(family, tmp_path):
    recipe = """
merge_method: dare_ties
base_model: base
random_seed: 7
models:
  - model: even
    parameters: {density: 0.3, weight: 0.5}
  - model: late
    parameters: {density: 0.3, weight: 0.5}
"""
    execute(_plan(recipe, family), tmp_path / "a")
    execute(_plan(recipe, family), tmp_path / "b")
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_an_existing_destination_is_refused(family, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExecutionError, match="already exists"):
        execute(_plan(LINEAR, family), tmp_path / "taken")


def test_a_failure_midway_leaves_nothing(family, tmp_path, monkeypatch):
    from apps.assembly.engine import executor

    calls = {"n": 0}
    real = executor._merge_one

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "_merge_one", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        execute(_plan(LINEAR, family), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
