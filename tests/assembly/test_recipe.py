"""Recipes: mergekit YAML parsed unchanged, settings evaluated as mergekit evaluates them,
unknown keys refused with the key and its place named."""

from __future__ import annotations

import pytest

from apps.assembly.engine.recipe import (
    Conditional,
    InputSlice,
    ModelRef,
    RecipeError,
    evaluate_setting,
    parameter,
    parse_recipe,
    recipe_from_data,
)

# mergekit's own examples (examples/*.yml and the README), as published.
LINEAR = """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
"""

GRADIENT_SLERP = """
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
# or, the equivalent models: syntax:
# models:
#   - model: psmathur/orca_mini_v3_13b
#   - model: garage-bAInd/Platypus2-13B
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
"""

TIES = """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""

DARE_TIES = """
models:
  - model: mistralai/Mistral-7B-v0.1
    # No parameters necessary for base model
  - model: samir-fama/SamirGPT-v1
    parameters:
      density: 0.53
      weight: 0.4
  - model: abacusai/Slerp-CM-mist-dpo
    parameters:
      density: 0.53
      weight: 0.3
  - model: EmbeddedLLM/Mistral-7B-Merge-14-v0.2
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  int8_mask: true
dtype: bfloat16
"""

FRANKENMERGE = """
slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
"""

MODEL_STOCK = """
models:
  - model: mistralai/Mistral-7B-Instruct-v0.2
  - model: NousResearch/Hermes-2-Pro-Mistral-7B
  - model: openchat/openchat-3.5-0106
merge_method: model_stock
base_model: mistralai/Mistral-7B-v0.1
dtype: bfloat16
"""

TASK_ARITHMETIC = """
base_model: meta-llama/Meta-Llama-3-8B
models:
  - model: meta-llama/Meta-Llama-3-8B-Instruct
    parameters:
      weight: 1.0
  - model: NousResearch/Hermes-2-Pro-Llama-3-8B
    parameters:
      weight: 0.5
merge_method: task_arithmetic
parameters:
  lambda: 0.7
  normalize: false
dtype: bfloat16
tokenizer_source: union
"""

DELLA = """
models:
  - model: meta-llama/Llama-2-7b-chat-hf
    parameters:
      weight: 1.0
      density: 0.5
      epsilon: 0.1
  - model: lmsys/vicuna-7b-v1.5@main
    parameters:
      weight: 1.0
      density: 0.5
      epsilon: 0.15
merge_method: della
base_model: meta-llama/Llama-2-7b-hf
parameters:
  lambda: 1.1
  normalize: true
  int8_mask: true
dtype: bfloat16
"""

TOKENIZER_BLOCK = """
models:
  - model: a
  - model: b+path/to/lora
merge_method: linear
parameters:
  weight: 1.0
tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    <|im_start|>:
      source: b
    <|im_end|>:
      source:
        kind: model_token
        model: a
        token: </s>
    <|pad|>:
      source:
        kind: zero
      force: true
chat_template: chatml
out_dtype: bfloat16
"""

MODULES = """
merge_method: linear
modules:
  text_decoder:
    models:
      - model: a
        parameters: {weight: 0.5}
      - model: b
        parameters: {weight: 0.5}
"""

AUDOBON = """
merge_method: ties
base_model: asset:llama-base@3
models:
  - model: asset:llama-code@1
    parameters: {weight: 1.0, density: 0.5}
random_seed: 7
graft:
  - component: model.layers.3.mlp
    from: asset:llama-math@2
  - component: head
    from: org/donor@v1
    into: head
  - component: [2, 4]
    from: ./local/model
    into: [4, 6]
validation:
  dataset: asset:wiki-sample@1
  max_samples: 64
  gates:
    - metric: loss_ratio_to_best_parent
      max: 1.2
  samples:
    - "def fibonacci(n):"
"""

EXAMPLES = {"linear": LINEAR, "gradient_slerp": GRADIENT_SLERP, "ties": TIES, "dare_ties": DARE_TIES,
            "frankenmerge": FRANKENMERGE, "model_stock": MODEL_STOCK, "task_arithmetic": TASK_ARITHMETIC,
            "della": DELLA, "tokenizer_block": TOKENIZER_BLOCK, "modules": MODULES, "audobon": AUDOBON}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_parses_and_round_trips(name: str) -> None:
    recipe = parse_recipe(EXAMPLES[name])
    again = parse_recipe(recipe.to_yaml())
    assert again == recipe


def test_example_fields() -> None:
    slerp = parse_recipe(GRADIENT_SLERP)
    assert slerp.merge_method == "slerp" and slerp.dtype == "float16"
    assert [s.layer_range for s in slerp.slices[0].sources] == [(0, 40), (0, 40)]
    t = slerp.parameters["t"]
    assert [c.filter for c in t] == ["self_attn", "mlp", None]
    assert t[0].value == [0, 0.5, 0.3, 0.7, 1]

    ties = parse_recipe(TIES)
    assert str(ties.base_model) == "TheBloke/Llama-2-13B-fp16"
    assert ties.parameters == {"normalize": True, "int8_mask": True}
    assert ties.models[2].parameters["weight"] == [Conditional(filter="mlp", value=0.5), Conditional(value=0)]

    dare = parse_recipe(DARE_TIES)
    assert dare.models[0].parameters is None

    tok = parse_recipe(TOKENIZER_BLOCK)
    source, tokens, pad = tok.tokenizer_settings()
    assert source == "union" and pad == 64 and sorted(tokens) == ["<|im_end|>", "<|im_start|>", "<|pad|>"]
    assert tokens["<|pad|>"].force is True and tokens["<|pad|>"].source.kind == "zero"
    assert tokens["<|im_end|>"].source.token == "</s>"
    assert str(tok.models[1].model) == "b+path/to/lora"
    assert parse_recipe(TASK_ARITHMETIC).tokenizer_settings() == ("union", {}, None)


def test_audobon_additions() -> None:
    recipe = parse_recipe(AUDOBON)
    assert recipe.random_seed == 7
    first, head, span = recipe.graft
    assert first.component == "model.layers.3.mlp" and str(first.from_) == "asset:llama-math@2"
    assert first.into is None and head.into == "head"
    assert span.component == (2, 4) and span.into == (4, 6)
    gate = recipe.validation.gates[0]
    assert (gate.metric, gate.max, gate.min) == ("loss_ratio_to_best_parent", 1.2, None)
    assert recipe.validation.max_samples == 64 and recipe.validation.samples == ["def fibonacci(n):"]
    assert [str(r) for r in recipe.referenced_models()] == [
        "asset:llama-base@3", "asset:llama-code@1", "asset:llama-math@2", "org/donor@v1", "./local/model"]


@pytest.mark.parametrize(("text", "path", "revision", "lora", "kind"), [
    ("org/name", "org/name", None, None, "hub"),
    ("org/name@v2.0", "org/name", "v2.0", None, "hub"),
    ("asset:my-merge@4", "asset:my-merge", "4", None, "asset"),
    ("/models/llama", "/models/llama", None, None, "path"),
    ("./models/llama+./adapters/sql", "./models/llama", None, "./adapters/sql", "path"),
    ("org/base@main+org/lora@r1", "org/base", "main", "org/lora@r1", "hub"),
])
def test_model_references(text: str, path: str, revision: str | None, lora: str | None, kind: str) -> None:
    ref = ModelRef.model_validate(text)
    assert (ref.model.path, ref.model.revision) == (path, revision)
    assert (str(ref.lora) if ref.lora else None) == lora
    assert ref.model.kind == kind
    assert str(ref) == text


def test_mapping_model_reference() -> None:
    recipe = recipe_from_data({"merge_method": "linear", "models": [
        {"model": {"model": {"path": "org/a", "revision": "r"}, "lora": "org/l"}}]})
    ref = recipe.models[0].model
    assert str(ref) == "org/a@r+org/l"
    assert ref == ModelRef.model_validate("org/a@r+org/l")  # equal, so usable as one model


# ---------------------------------------------------------------------- settings, by hand


def test_gradient_interpolation_matches_mergekit() -> None:
    gradient = [0, 0.5, 0.3, 0.7, 1]
    # scaled = t * 4; value = (1 - frac) * g[i0] + frac * g[i0 + 1]
    assert evaluate_setting("x", gradient, 0.0) == 0
    assert evaluate_setting("x", gradient, 1 / 3) == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 0.3)
    assert evaluate_setting("x", gradient, 0.5) == pytest.approx(0.3)
    assert evaluate_setting("x", gradient, 2 / 3) == pytest.approx(1 / 3 * 0.3 + 2 / 3 * 0.7)
    assert evaluate_setting("x", gradient, 1.0) == 1
    assert evaluate_setting("x", [0.25], 0.7) == 0.25
    assert evaluate_setting("x", 0.4, 0.9) == 0.4


def test_non_numeric_lists_step_and_scalars_pass() -> None:
    assert evaluate_setting("x", ["a", "b", "c"], 0.49) == "a"  # int(0.49 * 2) = 0
    assert evaluate_setting("x", ["a", "b", "c"], 0.5) == "b"
    assert evaluate_setting("x", [True, "b"], 1.0) == "b"
    assert evaluate_setting("x", True, 0.3) is True


def test_filters_first_match_wins_and_fallback() -> None:
    setting = parse_recipe(GRADIENT_SLERP).parameters["t"]
    assert evaluate_setting("model.layers.0.self_attn.q_proj.weight", setting, 0.0) == 0
    assert evaluate_setting("model.layers.9.mlp.up_proj.weight", setting, 0.0) == 1
    assert evaluate_setting("model.norm.weight", setting, 0.3) == 0.5
    # first match wins even when a later one matches too
    both = [Conditional(filter="mlp", value=1), Conditional(filter="up_proj", value=2)]
    assert evaluate_setting("model.layers.0.mlp.up_proj.weight", both, 0) == 1
    # "*" matches everything; no match at all is None
    assert evaluate_setting("anything", [Conditional(filter="*", value=3)], 0) == 3
    assert evaluate_setting("model.norm.weight", [Conditional(filter="mlp", value=1)], 0) is None
    assert evaluate_setting(None, [Conditional(filter="mlp", value=1)], 0) is None


def test_precedence_model_then_slice_then_global() -> None:
    recipe = parse_recipe("""
slices:
  - sources:
      - model: a
        layer_range: [0, 4]
        parameters:
          weight: 0.9
          density:
            - filter: mlp
              value: 0.3
      - model: b
        layer_range: [0, 4]
    parameters:
      density: [0.2, 0.8]
merge_method: ties
base_model: a
parameters:
  weight: 0.1
  density: 0.05
""")
    out = recipe.slices[0]

    def get(name: str, model: str, tensor: str, t: float) -> tuple:
        return parameter(name, tensor_name=tensor, t=t, model=ModelRef.model_validate(model),
                         slice_sources=out.sources, slice_parameters=out.parameters,
                         global_parameters=recipe.parameters)

    assert get("weight", "a", "model.layers.0.mlp.up_proj.weight", 0) == (0.9, "model")
    assert get("weight", "b", "model.layers.0.mlp.up_proj.weight", 0) == (0.1, "global")
    assert get("density", "a", "model.layers.0.mlp.up_proj.weight", 0.5) == (0.3, "model")
    # a's filter does not match attention: the slice's gradient applies (0.2 -> 0.8 at t = 0.5)
    value, where = get("density", "a", "model.layers.0.self_attn.q_proj.weight", 0.5)
    assert (value, where) == (pytest.approx(0.5), "slice")
    assert get("density", "b", "x", 1.0) == (0.8, "slice")
    assert get("gamma", "b", "x", 1.0) == (None, None)
    # method-wide lookups (model=None) skip the sources
    assert parameter("weight", tensor_name="x", t=0, model=None, slice_sources=out.sources,
                     slice_parameters=out.parameters, global_parameters=recipe.parameters) == (0.1, "global")


def test_a_source_listed_twice_uses_the_first_setting_that_evaluates() -> None:
    a = ModelRef.model_validate("a")
    sources = [InputSlice(model=a, layer_range=(0, 1), parameters={"w": [{"filter": "mlp", "value": 1}]}),
               InputSlice(model=a, layer_range=(0, 1), parameters={"w": 2})]
    kwargs = {"t": 0, "model": a, "slice_sources": sources, "slice_parameters": None,
              "global_parameters": None}
    assert parameter("w", tensor_name="attn", **kwargs) == (2, "model")
    assert parameter("w", tensor_name="mlp", **kwargs) == (1, "model")


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "message"), [
    ("merge_methd: linear\nmodels: [{model: a}]",
     "unknown key 'merge_methd' in the top level (did you mean 'merge_method'?)"),
    ("merge_method: linear\nslices: [{sorces: [{model: a, layer_range: [0, 1]}]}]",
     "unknown key 'sorces' in slices[0] (did you mean 'sources'?)"),
    ("merge_method: linear\nslices: [{sources: [{model: a, layer_rang: [0, 1]}]}]",
     "unknown key 'layer_rang' in slices[0].sources[0] (did you mean 'layer_range'?)"),
    ("merge_method: linear\nmodels: [{model: a, params: {weight: 1}}]",
     "unknown key 'params' in models[0] (did you mean 'parameters'?)"),
    ("merge_method: linear\nmodels: [{model: a}]\ntokenizer: {source: base, tokns: {}}",
     "unknown key 'tokns' in tokenizer (did you mean 'tokens'?)"),
    ("merge_method: linear\nmodels: [{model: a}]\ngraft: [{component: head, frm: b}]",
     "unknown key 'frm' in graft[0] (did you mean 'from'?)"),
    ("merge_method: linear\nmodels: [{model: a}]\nvalidation: {gates: [{metric: loss, max: 1, over: 2}]}",
     "unknown key 'over' in validation.gates[0]"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: [{filtr: mlp, value: 1}]}}]",
     "models[0].parameters.weight: entry 0: unknown key 'filtr'"),
])
def test_unknown_keys_are_named_with_their_place(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ("merge_method: linear", "exactly one of 'models', 'slices' or 'modules'"),
    ("merge_method: linear\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]",
     "(it has models and slices)"),
    ("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: base\ntokenizer: {source: base}",
     "not both"),
    ("models: [{model: a}]", "'merge_method' is required"),
    ("merge_method: linear\nmodels: [{model: a+b+c}]", "more than one '+'"),
    ("merge_method: linear\nmodels: [{model: a@1@2}]", "more than one '@'"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: []}}]", "empty list"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: [1, {value: 2}]}}]", "mixes"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: {value: {x: 1}}}}]", "must be a number"),
    ("merge_method: linear\nmodels: [{model: a}]\ndtype: bf16", "dtype 'bf16' is not one of"),
    ("merge_method: x\nslices: [{sources: [{model: a, layer_range: [0, 2]}, "
     "{model: b, layer_range: [0, 3]}]}]",
     "same number of layers: a [0, 2] has 2, b [0, 3] has 3"),
    ("merge_method: x\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]", "0 <= start <= end"),
    ("merge_method: x\nmodels: [{model: a}]\ngraft: [{component: [0, 2], from: b, into: head}]",
     "layer range"),
    ("merge_method: x\nmodels: [{model: a}]\ngraft: [{component: [0, 2], from: b, into: [1, 4]}]",
     "as many layers"),
    ("merge_method: x\nmodels: [{model: a}]\nvalidation: {gates: [{metric: loss}]}", "needs 'max' or 'min'"),
    ("merge_method: x\nmodels: [{model: a}]\n"
     "tokenizer: {tokens: {x: {source: {kind: model_token, model: a}}}}",
     "exactly one of token_id or token"),
    ("merge_method: x\nmodules: {m: {models: [{model: a}], "
     "slices: [{sources: [{model: a, layer_range: [0, 1]}]}]}}",
     "a module needs exactly one"),
    ("- merge_method: x", "this one is a list"),
    ("", "this one is empty"),
    ("merge_method: [x\n", "not valid YAML at line"),
])
def test_invalid_recipes(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text)
    assert message in str(caught.value)


def test_several_problems_are_listed_together() -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe("merge_method: x\nmodels: [{model: a, wieght: 1}]\ndtyp: float16\n")
    assert len(caught.value.problems) == 2
    assert "2 problems" in str(caught.value)
