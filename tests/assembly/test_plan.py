"""Plans: every input tensor mapped or dropped with a reason, parameters resolved per tensor as
mergekit resolves them, and each planning error named with its model, tensor, layer or parameter.
Models are tiny Llama-named safetensors folders written in tmp_path (4 layers, hidden 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from apps.assembly.engine.plan import (
    AdapterError,
    BaseModelRequiredError,
    GraftError,
    GraftSignatureError,
    LayerRangeError,
    MisplacedParameterError,
    MissingParameterError,
    ModelNotFoundError,
    ParameterValueError,
    Plan,
    PlanError,
    ShapeMismatchError,
    SourceCountError,
    TiedEmbeddingError,
    UnknownMethodError,
    UnknownParameterError,
    UnsupportedRecipeError,
    VocabMismatchError,
    make_plan,
)
from apps.assembly.engine.recipe import parse_recipe
from tests.registry.zoo import llama_like

LAYER_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
# Two models with weight 1, as most error tests need.
A_B = "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n"
A = "models: [{model: a, parameters: {weight: 1}}]\n"


def write_tokenizer(folder: Path, tokens: list[str]) -> None:
    (folder / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens)}}, "added_tokens": []}))


def tie(folder: Path) -> Path:
    """Drop the model's lm_head and declare the head tied to the embedding."""
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    return folder


class Zoo(dict):
    """name -> model folder; `resolve` is the resolver a plan is given."""

    def resolve(self, ref: str) -> Path:
        if ref not in self:
            raise LookupError(ref)
        return self[ref]

    def plan(self, text: str, **kwargs) -> Plan:
        plan = make_plan(parse_recipe(text), self.resolve, **kwargs)
        assert_accounted(plan, self)
        return plan


@pytest.fixture
def zoo(tmp_path: Path) -> Zoo:
    base = llama_like(tmp_path / "base", layers=4)
    zoo = Zoo(base=base)
    for i, name in enumerate(("a", "b", "c"), start=1):
        zoo[name] = llama_like(tmp_path / name, layers=4, base=base, scale=0.01, seed=i)
    return zoo


def assert_accounted(plan: Plan, zoo: Zoo) -> None:
    """Every tensor of every model taking part is a source of an output or dropped with a reason,
    and the dropped ones are not used."""
    used = {(s.model, s.tensor) for o in plan.outputs for s in o.sources}
    dropped = {(d.model, d.tensor) for d in plan.dropped}
    assert not used & dropped
    assert all(d.reason for d in plan.dropped)
    for model in plan.models:
        if set(model.roles) == {"tokenizer"}:
            continue
        names = set(load_file(str(Path(model.path) / "model.safetensors")))
        mine = {t for m, t in used | dropped if m == model.ref}
        assert mine == names, model.ref


def params(plan: Plan, name: str) -> dict[str, dict]:
    return {s.model: s.params for s in plan.output(name).sources}


# ---------------------------------------------------------------- mergekit's examples, per tensor


TIES = """
models:
  - model: a
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: b
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: c
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""


def test_ties_parameters_per_tensor(zoo: Zoo) -> None:
    plan = zoo.plan(TIES)
    # models: becomes one slice over layers 0-3 with the base appended: t = layer / 3.
    # a's density [1, 0.7, 0.1]: t*2 = 0, 2/3, 4/3, 2
    #   -> 1, 1/3*1 + 2/3*0.7 = 0.8, 2/3*0.7 + 1/3*0.1 = 0.5, 0.1
    # b's weight [0, 0.3, 0.7, 1]: t*3 = layer -> exactly the entries
    # c's weight: 0.5 where the tensor name has "mlp", else 0
    for layer, (density_a, weight_b) in enumerate([(1.0, 0.0), (0.8, 0.3), (0.5, 0.7), (0.1, 1.0)]):
        for short in LAYER_NAMES:
            name = f"model.layers.{layer}.{short}.weight"
            got = params(plan, name)
            assert got["a"] == {"weight": 1.0, "density": pytest.approx(density_a)}
            assert got["b"] == {"weight": pytest.approx(weight_b), "density": 0.5}
            assert got["c"] == {"weight": 0.5 if "mlp" in short else 0.0, "density": 0.33}
            assert got["base"] == {}
            out = plan.output(name)
            assert out.params == {"int8_mask": True, "normalize": True, "rescale": False, "lambda": 1.0}
            assert out.dtype == "F16" and out.method == "ties" and out.layer == layer
            assert [s.role for s in out.sources] == ["model", "model", "model", "base"]
    # outside the blocks: the embedding, the final norm and the head all at t = 0, as
    # mergekit 0.1.5 evaluates them (test_parity_mergekit.py checks it against mergekit)
    assert params(plan, "model.embed_tokens.weight")["a"]["density"] == 1.0
    assert params(plan, "model.embed_tokens.weight")["b"]["weight"] == 0.0
    assert params(plan, "lm_head.weight")["a"]["density"] == 1.0
    assert params(plan, "model.norm.weight")["b"]["weight"] == 0.0
    assert plan.config["num_hidden_layers"] == 4 and plan.config["torch_dtype"] == "float16"
    assert plan.dropped == [] and len(plan.outputs) == 3 + 4 * 9


SLERP = """
slices:
  - sources:
      - model: a
        layer_range: [0, 4]
      - model: b
        layer_range: [0, 4]
merge_method: slerp
base_model: a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: bfloat16
"""


def test_slerp_gradient_with_filters(zoo: Zoo) -> None:
    plan = zoo.plan(SLERP)
    # t of layer i is i/3; a 5-entry gradient is read at i/3 * 4 = 0, 4/3, 8/3, 4
    attn = [0, 2 / 3 * 0.5 + 1 / 3 * 0.3, 1 / 3 * 0.3 + 2 / 3 * 0.7, 1]
    mlp = [1, 2 / 3 * 0.5 + 1 / 3 * 0.7, 1 / 3 * 0.7 + 2 / 3 * 0.3, 0]
    for layer in range(4):
        def t(name: str, layer: int = layer) -> float:
            return plan.output(f"model.layers.{layer}.{name}.weight").params["t"]

        assert t("self_attn.v_proj") == pytest.approx(attn[layer])
        assert t("mlp.down_proj") == pytest.approx(mlp[layer])
        assert t("input_layernorm") == 0.5
    assert plan.output("model.embed_tokens.weight").params["t"] == 0.5
    assert plan.output("lm_head.weight").params["t"] == 0.5
    out = plan.output("model.layers.2.mlp.up_proj.weight")
    assert [(s.model, s.role, s.params) for s in out.sources] == [("a", "base", {}), ("b", "model", {})]
    assert out.dtype == "BF16" and plan.deterministic


def test_linear_weights_and_default_normalize(zoo: Zoo) -> None:
    plan = zoo.plan("""
models:
  - model: a
    parameters: {weight: 1.0}
  - model: b
    parameters: {weight: 0.3}
  - model: c
    parameters: {weight: 0.5}
merge_method: linear
""")
    out = plan.output("model.layers.3.mlp.up_proj.weight")
    assert out.params == {"normalize": True}
    assert [(s.model, s.params["weight"]) for s in out.sources] == [("a", 1.0), ("b", 0.3), ("c", 0.5)]
    assert out.dtype == "F32"  # no dtype: the inputs' own
    assert {m.ref: m.roles for m in plan.models} == {"a": ["source"], "b": ["source"], "c": ["source"]}


def test_dare_ties_is_random_and_rescales(zoo: Zoo) -> None:
    plan = zoo.plan("""
models:
  - model: base
  - model: a
    parameters: {density: 0.53, weight: 0.4}
  - model: b
    parameters: {density: 0.53, weight: 0.3}
merge_method: dare_ties
base_model: base
parameters: {int8_mask: true}
random_seed: 11
""")
    assert not plan.deterministic and plan.to_json()["random_seed"] == 11
    out = plan.output("model.layers.0.self_attn.q_proj.weight")
    assert out.params["rescale"] is True and out.params["normalize"] is False
    assert [s.model for s in out.sources] == ["base", "a", "b"]  # the listed base stays where it is


def test_task_arithmetic_lambda_and_della_epsilon(zoo: Zoo) -> None:
    plan = zoo.plan("""
base_model: base
models:
  - model: a
    parameters: {weight: 1.0}
  - model: b
    parameters: {weight: 0.5}
merge_method: task_arithmetic
parameters: {lambda: 0.7, normalize: false}
""")
    assert plan.output("model.norm.weight").params["lambda"] == 0.7

    plan = zoo.plan("""
models:
  - model: a
    parameters: {weight: 1.0, density: 0.5, epsilon: 0.1}
  - model: b
    parameters: {weight: 1.0, density: 0.5}
merge_method: della
base_model: base
parameters: {lambda: 1.1}
""")
    got = params(plan, "model.layers.1.mlp.gate_proj.weight")
    assert got["a"] == {"weight": 1.0, "density": 0.5, "epsilon": 0.1}
    assert got["b"]["epsilon"] == 0.15  # della's default
    assert plan.output("model.layers.1.mlp.gate_proj.weight").params["lambda"] == 1.1


def test_model_stock(zoo: Zoo) -> None:
    plan = zoo.plan("""
models:
  - model: a
  - model: b
  - model: c
merge_method: model_stock
base_model: base
""")
    out = plan.output("model.layers.0.mlp.up_proj.weight")
    assert [s.role for s in out.sources] == ["model", "model", "model", "base"]
    assert out.params == {"filter_wise": False}


def test_precedence_in_slices(zoo: Zoo) -> None:
    plan = zoo.plan("""
slices:
  - sources:
      - model: a
        layer_range: [0, 4]
        parameters:
          weight:
            - filter: self_attn
              value: 0.9
      - model: b
        layer_range: [0, 4]
    parameters:
      weight: 0.2
merge_method: linear
parameters:
  weight: 0.1
  normalize: false
""")
    assert params(plan, "model.layers.0.self_attn.k_proj.weight") == {"a": {"weight": 0.9},
                                                                       "b": {"weight": 0.2}}
    # a's filter does not match the MLP: the slice's 0.2 applies, never the global 0.1
    assert params(plan, "model.layers.0.mlp.up_proj.weight") == {"a": {"weight": 0.2}, "b": {"weight": 0.2}}
    assert plan.output("model.layers.0.mlp.up_proj.weight").params == {"normalize": False}


FRANKENMERGE = """
slices:
  - sources:
    - model: a
      layer_range: [0, 3]
  - sources:
    - model: b
      layer_range: [1, 4]
      parameters:
        scale:
          - filter: layers.2.
            value: 0.5
          - value: 1.0
merge_method: passthrough
dtype: float16
"""


def test_passthrough_frankenmerge_with_overlapping_slices(zoo: Zoo) -> None:
    plan = zoo.plan(FRANKENMERGE)
    assert plan.config["num_hidden_layers"] == 6
    layers = [(e["output"], e["sources"][0]["model"], e["sources"][0]["layer"], e["t"])
              for e in plan.layer_map]
    assert layers == [(0, "a", 0, 0.0), (1, "a", 1, 0.5), (2, "a", 2, 1.0),
                      (3, "b", 1, 0.0), (4, "b", 2, 0.5), (5, "b", 3, 1.0)]
    out = plan.output("model.layers.4.self_attn.q_proj.weight")
    assert [(s.model, s.tensor) for s in out.sources] == [("b", "model.layers.2.self_attn.q_proj.weight")]
    # the per-model filter sees b's own tensor name (layers.2), not the output's (layers.4)
    assert out.sources[0].params == {"scale": 0.5}
    assert plan.output("model.layers.5.mlp.up_proj.weight").sources[0].params == {"scale": 1.0}
    assert plan.output("model.layers.2.mlp.up_proj.weight").sources[0].params == {"scale": None}
    assert plan.output("model.embed_tokens.weight").sources[0].model == "a"
    assert plan.output("lm_head.weight").sources[0].model == "b"
    reasons = {(d.model, d.tensor): d.reason for d in plan.dropped}
    assert reasons[("a", "model.layers.3.mlp.up_proj.weight")] == "layer 3 is outside every slice"
    assert reasons[("b", "model.layers.0.mlp.up_proj.weight")] == "layer 0 is outside every slice"
    assert "first slice" in reasons[("b", "model.embed_tokens.weight")]
    assert "last slice" in reasons[("a", "lm_head.weight")]
    assert len(reasons) == 9 + 9 + 1 + 2
    assert plan.to_json()["layers"]["output"] == 6


def test_every_output_shape_and_the_json(zoo: Zoo) -> None:
    plan = zoo.plan(TIES)
    data = json.loads(json.dumps(plan.to_json()))
    assert set(data) >= {"method", "models", "layers", "outputs", "dropped", "config", "tokenizer", "vocab",
                         "estimate", "warnings", "accounting", "grafts"}
    head = next(o for o in data["outputs"] if o["name"] == "lm_head.weight")
    assert head["shape"] == [64, 16] and head["dtype"] == "F16" and head["bytes"] == 64 * 16 * 2
    assert head["sources"][0] == {"model": "a", "tensor": "lm_head.weight", "shape": [64, 16], "dtype": "F32",
                                  "layer": None, "role": "model", "params": {"weight": 1.0, "density": 1.0},
                                  "note": None}
    assert data["accounting"] == {"input_tensors": 4 * 39, "uses": 4 * 39, "dropped": 0, "output_tensors": 39}


def test_estimate(zoo: Zoo) -> None:
    plan = zoo.plan(TIES)
    est = plan.estimate
    assert est.output_bytes == sum(o.nbytes for o in plan.outputs)
    assert est.read_bytes == 4 * sum(o.numel * 4 for o in plan.outputs)  # four float32 inputs each
    largest = max(plan.outputs, key=lambda o: o.numel)
    assert est.peak_memory_bytes >= largest.numel * 2 * 4  # float16 compute, four inputs
    assert est.disk_bytes >= est.output_bytes
    assert est.seconds >= est.read_bytes / est.assumptions["read_bytes_per_s"]


# ------------------------------------------------------------------------------------ errors


def test_missing_model(zoo: Zoo) -> None:
    with pytest.raises(ModelNotFoundError, match="model 'org/ghost' is not in the registry"):
        zoo.plan(A_B.replace("model: b", "model: org/ghost") + "merge_method: linear")


def test_incompatible_shapes(zoo: Zoo, tmp_path: Path) -> None:
    zoo["wide"] = llama_like(tmp_path / "wide", hidden=8, layers=4, seed=5)
    with pytest.raises(ShapeMismatchError) as caught:
        zoo.plan("models: [{model: a, parameters: {weight: 1}}, {model: wide, parameters: {weight: 1}}]\n"
                 "merge_method: linear")
    assert str(caught.value) == (
        "tensor model.embed_tokens.weight: the hidden sizes differ ('a' model.embed_tokens.weight [64, 16], "
        "'wide' model.embed_tokens.weight [64, 8])")
    zoo["wide"] = llama_like(tmp_path / "wide2", hidden=16, layers=4, seed=5)
    tensors = load_file(str(zoo["wide"] / "model.safetensors"))
    tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((32, 16), np.float32)
    save_file(tensors, str(zoo["wide"] / "model.safetensors"))
    with pytest.raises(ShapeMismatchError) as caught:
        zoo.plan("models: [{model: a, parameters: {weight: 1}}, {model: wide, parameters: {weight: 1}}]\n"
                 "merge_method: linear")
    assert str(caught.value) == (
        "layer 2 tensor model.layers.2.mlp.up_proj.weight: the shapes differ ('a' "
        "model.layers.2.mlp.up_proj.weight [16, 16], 'wide' model.layers.2.mlp.up_proj.weight [32, 16])")


def test_layer_counts_differ_under_models(zoo: Zoo, tmp_path: Path) -> None:
    zoo["short"] = llama_like(tmp_path / "short", layers=2, seed=5)
    with pytest.raises(ShapeMismatchError, match="'a' has 4, 'short' has 2"):
        zoo.plan("models: [{model: a, parameters: {weight: 1}}, {model: short, parameters: {weight: 1}}]\n"
                 "merge_method: linear")


def test_layer_range_beyond_the_model(zoo: Zoo) -> None:
    with pytest.raises(LayerRangeError) as caught:
        zoo.plan("slices: [{sources: [{model: a, layer_range: [2, 6]}]}]\nmerge_method: passthrough")
    assert str(caught.value) == ("slices[0].sources[0]: layer_range [2, 6] of 'a' needs layers 4-5, which it "
                                 "does not have (it has 4 layers: 0-3)")


def test_unknown_method(zoo: Zoo) -> None:
    with pytest.raises(UnknownMethodError, match="unknown merge method 'tiez' \\(did you mean 'ties'\\?\\)"):
        zoo.plan("models: [{model: a}]\nmerge_method: tiez")
    with pytest.raises(UnknownMethodError, match="'sce' is a mergekit method Audobon does not implement"):
        zoo.plan("models: [{model: a}]\nmerge_method: sce")


def test_unknown_and_misplaced_parameters(zoo: Zoo) -> None:
    with pytest.raises(UnknownParameterError) as caught:
        zoo.plan("models: [{model: a, parameters: {weight: 1, densty: 0.5}}]\nmerge_method: ties\n"
                 "base_model: base")
    assert ("models[0] (a) parameters: merge method 'ties' has no parameter 'densty' (did you mean "
            "'density'?)") in str(caught.value)
    with pytest.raises(UnknownParameterError, match="'slerp' has no parameter 'weight'"):
        zoo.plan(SLERP.replace("parameters:\n  t:", "parameters:\n  weight: 1\n  t:"))
    with pytest.raises(MisplacedParameterError, match="'normalize' is a method-wide parameter of 'ties'"):
        zoo.plan("models: [{model: a, parameters: {weight: 1, normalize: true}}]\nmerge_method: ties\n"
                 "base_model: base")


@pytest.mark.parametrize("density", ["0", "1.5", "-0.1", "[0.5, 1.2]"])
def test_density_outside_zero_one(zoo: Zoo, density: str) -> None:
    with pytest.raises(ParameterValueError,
                       match=r"models\[1\] \(b\) parameters: density must be in \(0, 1\]"):
        zoo.plan(f"models: [{{model: a, parameters: {{weight: 1}}}}, {{model: b, parameters: {{weight: 1, "
                 f"density: {density}}}}}]\nmerge_method: ties\nbase_model: base")


def test_weight_not_a_number(zoo: Zoo) -> None:
    with pytest.raises(ParameterValueError,
                       match=r"models\[0\] \(a\) parameters: weight must be a number, got 'heavy'"):
        zoo.plan("models: [{model: a, parameters: {weight: heavy}}]\nmerge_method: linear")
    # YAML 1.1 reads 1e-1 as a string; taken as the number, with a warning
    plan = zoo.plan("models: [{model: a, parameters: {weight: 1e-1}}]\nmerge_method: linear")
    assert params(plan, "model.norm.weight") == {"a": {"weight": 0.1}}
    assert any("'1e-1' is a string" in w for w in plan.warnings)


def test_missing_required_parameters(zoo: Zoo) -> None:
    with pytest.raises(MissingParameterError,
                       match=r"'linear' needs parameter 'weight' for model 'b' \(tensor model\.embed_tokens"):
        zoo.plan("models: [{model: a, parameters: {weight: 1}}, {model: b}]\nmerge_method: linear")
    with pytest.raises(MissingParameterError, match="'slerp' needs parameter 't'"):
        zoo.plan("models: [{model: a}, {model: b}]\nmerge_method: slerp\nbase_model: a")


def test_cross_parameter_checks_name_the_model_and_tensor(zoo: Zoo) -> None:
    with pytest.raises(ParameterValueError) as caught:
        zoo.plan("models: [{model: a, parameters: {weight: 1, density: 0.1, epsilon: 0.2}}]\n"
                 "merge_method: della\nbase_model: base")
    assert ("tensor model.embed_tokens.weight: della: density ± epsilon must stay inside (0, 1)"
            in str(caught.value))
    assert "for model 'a'" in str(caught.value)


def test_method_needs_a_base_model(zoo: Zoo) -> None:
    with pytest.raises(BaseModelRequiredError, match="'ties' needs a base_model, and the recipe has none"):
        zoo.plan(A + "merge_method: ties")
    with pytest.raises(BaseModelRequiredError, match=r"slices\[0\]: merge method 'slerp' needs the base"):
        zoo.plan(SLERP.replace("base_model: a", "base_model: c"))


def test_model_counts(zoo: Zoo) -> None:
    with pytest.raises(SourceCountError, match=r"'slerp' takes exactly 1 model\(s\) besides the base, got 2"):
        zoo.plan("models: [{model: a}, {model: b}, {model: c}]\nmerge_method: slerp\nbase_model: a\n"
                 "parameters: {t: 0.5}")
    with pytest.raises(SourceCountError, match="'passthrough' takes exactly 1 model"):
        zoo.plan("models: [{model: a}, {model: b}]\nmerge_method: passthrough")


def test_modules_are_parsed_but_not_planned(zoo: Zoo) -> None:
    with pytest.raises(UnsupportedRecipeError, match="'modules' \\(text_decoder\\)"):
        zoo.plan("merge_method: linear\nmodules: {text_decoder: {models: [{model: a}]}}")


def test_every_plan_error_is_a_plan_error() -> None:
    for error in (ModelNotFoundError, ShapeMismatchError, LayerRangeError, UnknownMethodError,
                  UnknownParameterError, ParameterValueError, BaseModelRequiredError, GraftSignatureError,
                  VocabMismatchError, TiedEmbeddingError, AdapterError):
        assert issubclass(error, PlanError) and issubclass(error, ValueError)


# ------------------------------------------------------------------ vocabulary and tied heads


def test_different_vocab_sizes_need_a_tokenizer_source(zoo: Zoo, tmp_path: Path) -> None:
    zoo["big"] = llama_like(tmp_path / "big", vocab=80, layers=4, seed=9)
    write_tokenizer(zoo["a"], [f"t{i}" for i in range(64)])
    write_tokenizer(zoo["big"], [f"t{i}" for i in range(60)] + [f"x{i}" for i in range(20)])
    recipe = "models: [{model: a, parameters: {weight: 1}}, {model: big, parameters: {weight: 1}}]\n" \
             "merge_method: linear\n"
    with pytest.raises(VocabMismatchError) as caught:
        zoo.plan(recipe)
    assert "model.embed_tokens.weight" in str(caught.value)
    assert "'a' has 64, 'big' has 80" in str(caught.value)

    plan = zoo.plan(recipe + "tokenizer_source: union\n")  # 64 t-tokens and 20 x-tokens
    assert plan.output("model.embed_tokens.weight").shape == (84, 16)
    assert plan.output("lm_head.weight").shape == (84, 16)
    assert plan.config["vocab_size"] == 84 and plan.tokenizer["rebuilt"]
    assert plan.tokenizer["files"] == ["tokenizer.json"]

    plan = zoo.plan(recipe + "tokenizer: {source: base, pad_to_multiple_of: 32, tokens: {'<new>': {}}}\n")
    assert plan.output("model.embed_tokens.weight").shape == (96, 16)  # a's 64 + 1, padded to 96
    plan = zoo.plan(recipe + "tokenizer_source: big\n")
    assert plan.output("lm_head.weight").shape == (80, 16) and plan.tokenizer["from"] == "big"


def test_padded_vocabulary_is_reported(zoo: Zoo) -> None:
    write_tokenizer(zoo["a"], [f"t{i}" for i in range(60)])
    plan = zoo.plan("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear")
    assert plan.vocab["models"]["a"] == {"embedding_rows": 64, "tokenizer": 60, "config": 64, "padded_by": 4}
    assert plan.tokenizer["files"] == ["tokenizer.json"] and not plan.tokenizer["rebuilt"]


def test_tied_base_ties_the_output(zoo: Zoo) -> None:
    tie(zoo["base"])
    plan = zoo.plan("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: ties\nbase_model: base")
    assert "lm_head.weight" not in {o.name for o in plan.outputs}
    reasons = {(d.model, d.tensor): d.reason for d in plan.dropped}
    assert "ties its head to the embedding" in reasons[("a", "lm_head.weight")]
    assert plan.config["tie_word_embeddings"] is True and plan.vocab["tied"] is True


def test_untied_output_reads_a_tied_models_embedding_as_its_head(zoo: Zoo) -> None:
    tie(zoo["b"])
    plan = zoo.plan("models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n"
                    "merge_method: linear")
    head = plan.output("lm_head.weight")
    assert [(s.model, s.tensor) for s in head.sources] == [("a", "lm_head.weight"),
                                                           ("b", "model.embed_tokens.weight")]
    assert head.sources[1].note == "tied: its embedding stands in for lm_head.weight"
    assert plan.config["tie_word_embeddings"] is False


def test_untied_config_without_any_head(zoo: Zoo) -> None:
    tie(zoo["a"])
    config = json.loads((zoo["a"] / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (zoo["a"] / "config.json").write_text(json.dumps(config))
    with pytest.raises(TiedEmbeddingError, match="tie_word_embeddings false, but no model"):
        zoo.plan("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear")


def test_passthrough_embedding_and_head_from_different_vocabularies(zoo: Zoo, tmp_path: Path) -> None:
    zoo["big"] = llama_like(tmp_path / "big", vocab=80, layers=4, seed=9)
    with pytest.raises(VocabMismatchError, match=r"embedding model\.embed_tokens\.weight \(64 rows"):
        zoo.plan("slices: [{sources: [{model: a, layer_range: [0, 2]}]}, "
                 "{sources: [{model: big, layer_range: [2, 4]}]}]\nmerge_method: passthrough")


# ------------------------------------------------------------------------------------- grafts


def test_graft_with_matching_signature(zoo: Zoo) -> None:
    plan = zoo.plan("models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n"
                    "merge_method: linear\ngraft:\n  - {component: model.layers.1.mlp, from: c}\n"
                    "  - {component: [2, 3], from: c, into: [3, 4]}\n")
    out = plan.output("model.layers.1.mlp.up_proj.weight")
    assert out.method == "graft" and out.params == {}
    assert [(s.model, s.tensor, s.role) for s in out.sources] == [
        ("c", "model.layers.1.mlp.up_proj.weight", "donor")]
    assert plan.output("model.layers.1.self_attn.q_proj.weight").method == "linear"
    moved = plan.output("model.layers.3.input_layernorm.weight")
    assert moved.sources[0].tensor == "model.layers.2.input_layernorm.weight"
    reasons = {(d.model, d.tensor): d.reason for d in plan.dropped}
    assert reasons[("a", "model.layers.1.mlp.up_proj.weight")].startswith("replaced by graft[0]")
    assert reasons[("c", "model.layers.0.mlp.up_proj.weight")].startswith("only the grafted component")
    assert [g["component"] for g in plan.grafts] == ["model.layers.1.mlp", "model.layers.2"]
    assert {m.ref: m.roles for m in plan.models}["c"] == ["donor"]


def test_graft_with_other_signature(zoo: Zoo, tmp_path: Path) -> None:
    zoo["big"] = llama_like(tmp_path / "big", vocab=80, layers=4, seed=9)
    with pytest.raises(GraftSignatureError) as caught:
        zoo.plan("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\n"
                 "graft: [{component: head, from: big}]")
    message = str(caught.value)
    assert "graft[0]: component 'head' of 'big'" in message and "weight: [80, 16] vs [64, 16]" in message
    with pytest.raises(GraftError, match=r"has no component 'model\.layers\.9\.mlp'"):
        zoo.plan("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\n"
                 "graft: [{component: model.layers.9.mlp, from: c}]")
    with pytest.raises(GraftError, match=r"the output has no component 'model\.layers\.7'"):
        zoo.plan("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\n"
                 "graft: [{component: [3, 4], from: c, into: [7, 8]}]")


# ------------------------------------------------------------------------------------ adapters


def write_adapter(folder: Path, rank: int = 2, out_features: int = 16, *,
                  peft_prefix: str = "base_model.model.", adapter_name: str = "") -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    prefix = f"{peft_prefix}model.layers.0.self_attn.q_proj"
    a = rng.standard_normal((rank, 16), dtype=np.float32)
    b = rng.standard_normal((out_features, rank), dtype=np.float32)
    save_file({f"{prefix}.lora_A{adapter_name}.weight": a, f"{prefix}.lora_B{adapter_name}.weight": b},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 4,
                                                            "target_modules": ["q_proj"]}))
    return folder


def test_model_plus_lora(zoo: Zoo, tmp_path: Path) -> None:
    zoo["sql"] = write_adapter(tmp_path / "sql")
    plan = zoo.plan("models: [{model: a+sql, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n"
                    "merge_method: linear")
    model = next(m for m in plan.models if m.ref == "a+sql")
    assert model.adapter["r"] == 2 and model.adapter["modules"] == 1
    assert plan.output("model.layers.0.self_attn.q_proj.weight").sources[0].model == "a+sql"
    zoo["bad"] = write_adapter(tmp_path / "bad", out_features=8)
    with pytest.raises(AdapterError, match=r"does not fit model\.layers\.0\.self_attn\.q_proj\.weight"):
        zoo.plan("models: [{model: a+bad, parameters: {weight: 1}}]\nmerge_method: linear")
    with pytest.raises(ModelNotFoundError, match="model 'nowhere' is not in the registry"):
        zoo.plan("models: [{model: a+nowhere, parameters: {weight: 1}}]\nmerge_method: linear")


@pytest.mark.parametrize("peft_prefix", ["base_model.model.", ""], ids=["peft-prefix", "bare"])
@pytest.mark.parametrize("adapter_name", ["", ".default"], ids=["unnamed", "named"])
def test_the_adapter_the_plan_accepts_is_the_one_the_merge_applies(zoo: Zoo, tmp_path: Path, peft_prefix: str,
                                                                    adapter_name: str) -> None:
    """Adapter tensor names with or without PEFT's prefix and adapter name: the planner and
    the executor read them with one matcher, so an accepted adapter is never skipped."""
    from apps.assembly.engine.executor import execute

    zoo["lora"] = write_adapter(tmp_path / "lora", peft_prefix=peft_prefix, adapter_name=adapter_name)
    text = "models: [{model: a+lora, parameters: {weight: 1}}]\nmerge_method: linear\ndtype: float32"
    plan = zoo.plan(text)
    assert next(m for m in plan.models if m.ref == "a+lora").adapter["modules"] == 1
    execute(plan, tmp_path / "out", recipe_text=text, device="cpu")
    merged = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        merged.update(load_file(str(f)))
    name = "model.layers.0.self_attn.q_proj.weight"
    lora = load_file(str(zoo["lora"] / "adapter_model.safetensors"))
    a = next(v for k, v in lora.items() if ".lora_A" in k)
    b = next(v for k, v in lora.items() if ".lora_B" in k)
    base = load_file(str(zoo["a"] / "model.safetensors"))[name]
    np.testing.assert_allclose(merged[name], base + (4 / 2) * (b @ a), rtol=1e-5, atol=1e-5)
    untouched = "model.layers.1.self_attn.q_proj.weight"
    assert np.array_equal(merged[untouched], load_file(str(zoo["a"] / "model.safetensors"))[untouched])


def test_the_estimate_predicts_validation_next_to_the_merge(zoo: Zoo) -> None:
    """Validation evaluates the result and each parent one at a time, in its stored dtype:
    its peak is the largest single model's need, at least that model's weights."""
    est = zoo.plan(TIES).estimate
    assert set(est.validation_models) == {"result", "a", "b", "c", "base"}
    assert est.validation_peak_memory_bytes == max(est.validation_models.values())
    assert est.validation_models["result"] > est.output_bytes  # float16 result: its weights and more
    parent_bytes = sum(f.stat().st_size for f in zoo["a"].glob("*.safetensors"))
    assert est.validation_models["a"] > parent_bytes - 4096  # float32 parent, not cast
    assert est.validation_seconds > 0
    assert {"validation_peak_memory_bytes", "validation_seconds"} <= set(est.to_json())


# ------------------------------------------------------------------------------------- misc


def test_per_layer_config_follows_the_splice(zoo: Zoo) -> None:
    for name in ("a", "b"):
        config = json.loads((zoo[name] / "config.json").read_text())
        config["layer_types"] = [f"{name}{i}" for i in range(4)]
        (zoo[name] / "config.json").write_text(json.dumps(config))
    plan = zoo.plan(FRANKENMERGE)
    assert plan.config["layer_types"] == ["a0", "a1", "a2", "b1", "b2", "b3"]
    assert plan.config["num_hidden_layers"] == 6


def test_a_model_twice_in_one_slice(zoo: Zoo) -> None:
    with pytest.raises(SourceCountError, match="'a' is listed more than once"):
        zoo.plan("slices: [{sources: [{model: a, layer_range: [0, 2], parameters: {weight: 1}}, "
                 "{model: a, layer_range: [2, 4], parameters: {weight: 1}}]}]\nmerge_method: linear")


def test_planning_imports_no_torch(zoo: Zoo) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from apps.assembly.engine.plan import make_plan\n"
        "from apps.assembly.engine.recipe import parse_recipe\n"
        f"paths = {{'a': Path({str(zoo['a'])!r}), 'base': Path({str(zoo['base'])!r})}}\n"
        "recipe = parse_recipe('models: [{model: a, parameters: {weight: 1, density: 0.5}}]\\n"
        "merge_method: dare_ties\\nbase_model: base')\n"
        "plan = make_plan(recipe, paths.__getitem__)\n"
        "assert plan.outputs and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
        "assert 'apps.assembly.engine.methods.dare_ties' in sys.modules  # the registry's own table\n"
        "assert plan.output('model.layers.0.mlp.up_proj.weight').sources[0].params['density'] == 0.5\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
