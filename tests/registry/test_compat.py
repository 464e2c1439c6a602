"""What a pair of models allows: weight merge, layer splice, component swap, adapter."""

import numpy as np
import pytest

from apps.registry.engine.compat import compatibility_matrix, compatible_components, pair_compatibility
from apps.registry.engine.components import catalogue
from apps.registry.engine.model import read_model

from .tiny_models import llama_tensors, lora_tensors, write_adapter, write_llama, write_model


def blocks(components):
    return sorted((c for c in components if c.kind == "block"), key=lambda c: c.layer)


@pytest.fixture
def base(tmp_path):
    return read_model(write_llama(tmp_path / "base", seed=0))


def test_identical_shapes_allow_everything_but_an_adapter(base, tmp_path):
    other = read_model(write_llama(tmp_path / "other", seed=1))
    result = pair_compatibility(base, other)
    for what in ("weight_merge", "layer_splice", "component_swap"):
        assert result[what]["ok"], (what, result[what])
        assert result[what]["reasons"] == []
    assert result["weight_merge"]["notes"] == []
    swap = result["component_swap"]
    assert {b.id for b in blocks(catalogue(base))} <= set(swap["swappable"])
    assert swap["not_swappable"] == {} and all(swap["kinds"].values())
    assert result["adapter"] == {"ok": False, "reasons": ["neither is a PEFT adapter"], "adapter": None}


def test_dtype_difference_is_a_note_not_a_no(base, tmp_path):
    half = read_model(write_model(tmp_path / "half", llama_tensors(dtype=np.float16)))
    merge = pair_compatibility(base, half)["weight_merge"]
    assert merge["ok"] and merge["reasons"] == []
    assert "F32 vs F16" in merge["notes"][0]


def test_different_hidden_sizes_name_the_shapes(base, tmp_path):
    wide = read_model(write_llama(tmp_path / "wide", hidden=16))
    result = pair_compatibility(base, wide)
    merge = result["weight_merge"]
    assert not merge["ok"]
    assert "model.embed_tokens.weight [32, 8] vs [32, 16]" in merge["reasons"][0]
    splice = result["layer_splice"]
    assert not splice["ok"]
    assert splice["reasons"][0].startswith("layers 0-1 of A match no layer of the other model; "
                                           "A layer 0 vs B layer 0: ")
    assert "mlp.down_proj.weight [8, 16] vs [16, 16]" in splice["reasons"][0]
    assert splice["reasons"][1] == "layers 0-1 of B match no layer of the other model"
    swap = result["component_swap"]
    assert not swap["ok"] and swap["swappable"] == []
    assert swap["not_swappable"]["model.layers.1.mlp"] == (
        "mlp.down_proj.weight [8, 16] vs [16, 16], mlp.gate_proj.weight [16, 8] vs [16, 16], "
        "mlp.up_proj.weight [16, 8] vs [16, 16]")
    # Layers that differ alike are one reason, not one per layer.
    assert f"mlp of layers 0-1: {swap['not_swappable']['model.layers.1.mlp']}" in swap["reasons"]
    assert "head: weight [32, 8] vs [32, 16]" in swap["reasons"]


def test_different_layer_counts(base, tmp_path):
    deep = read_model(write_llama(tmp_path / "deep", layers=4, seed=3))
    result = pair_compatibility(base, deep)
    merge = result["weight_merge"]
    assert not merge["ok"]
    assert merge["reasons"] == [merge["reasons"][0]]
    assert "layers 2-3 only in B" in merge["reasons"][0] and "model.layers.2." in merge["reasons"][0]
    splice = result["layer_splice"]
    assert splice["ok"] and splice["notes"][0] == "A has 2 layers, B has 4"
    swap = result["component_swap"]
    assert swap["ok"]
    assert {b.id for b in blocks(catalogue(base))} <= set(swap["swappable"])
    assert "layers 2-3 only in B" in swap["reasons"]
    assert swap["kinds"]["block"] is True


def test_adapter_that_fits(base, tmp_path):
    adapter = read_model(write_adapter(tmp_path / "lora", lora_tensors()))
    for a, b, side in ((base, adapter, "B"), (adapter, base, "A")):
        result = pair_compatibility(a, b)
        assert result["adapter"]["ok"], result["adapter"]
        assert result["adapter"]["adapter"] == side and result["adapter"]["modules"] == 4
        assert not result["weight_merge"]["ok"]  # an adapter is not full weights


def test_adapter_target_module_missing(base, tmp_path):
    tensors = lora_tensors()
    adapter = read_model(write_adapter(tmp_path / "lora", tensors, targets=["q_proj", "gate_projx"]))
    reasons = pair_compatibility(base, adapter)["adapter"]["reasons"]
    assert reasons == ["target module 'gate_projx' matches no module in the base"]

    tensors["base_model.model.model.layers.0.self_attn.qkv.lora_A.weight"] = np.zeros((2, 8), np.float32)
    tensors["base_model.model.model.layers.0.self_attn.qkv.lora_B.weight"] = np.zeros((8, 2), np.float32)
    adapter = read_model(write_adapter(tmp_path / "lora2", tensors))
    reasons = pair_compatibility(base, adapter)["adapter"]["reasons"]
    assert reasons == ["model.layers.0.self_attn.qkv: no such module in the base"]


def test_adapter_rank_and_shape_mismatch(base, tmp_path):
    tensors = lora_tensors()
    q = "base_model.model.model.layers.1.self_attn.q_proj"
    tensors[f"{q}.lora_B.weight"] = np.zeros((8, 3), np.float32)  # rank 3 against lora_A's 2
    v = "base_model.model.model.layers.0.self_attn.v_proj"
    tensors[f"{v}.lora_A.weight"] = np.zeros((2, 9), np.float32)  # 9 inputs, the base has 8
    adapter = read_model(write_adapter(tmp_path / "lora", tensors))
    result = pair_compatibility(base, adapter)["adapter"]
    assert not result["ok"]
    assert result["reasons"] == [
        "model.layers.0.self_attn.v_proj: lora_A [2, 9] expects 9 inputs, base weight [4, 8] has 8",
        "model.layers.1.self_attn.q_proj: lora_B [8, 3] has rank 3 but lora_A [2, 8] has 2",
    ]


def test_adapter_rank_differs_from_config(base, tmp_path):
    adapter = read_model(write_adapter(tmp_path / "lora", lora_tensors(r=4), r=2))
    reasons = pair_compatibility(base, adapter)["adapter"]["reasons"]
    assert len(reasons) == 4 and all("rank 4 but the adapter config says r=2" in r for r in reasons)


def test_compatible_components(base, tmp_path):
    deep = read_model(write_llama(tmp_path / "deep", layers=4, seed=5))
    wide = read_model(write_llama(tmp_path / "wide", hidden=16))
    cats = {"base": catalogue(base), "deep": catalogue(deep), "wide": catalogue(wide)}
    target = blocks(cats["base"])[0]
    found = compatible_components(target, cats)
    assert [m for m, _ in found] == ["base"] * 2 + ["deep"] * 4
    assert all(c.kind == "block" and c.signature == target.signature for _, c in found)
    assert sorted(c.layer for m, c in found if m == "deep") == [0, 1, 2, 3]

    # Children too: layer 3's attention of `deep` stands in for layer 0's of `base`.
    attention = next(c for c in target.children if c.kind == "attention")
    found = compatible_components(attention, cats)
    assert len([m for m, _ in found if m == "deep"]) == 4 and "wide" not in {m for m, _ in found}


def test_compatibility_matrix(base, tmp_path):
    models = {
        "base": base,
        "tuned": read_model(write_llama(tmp_path / "tuned", seed=9)),
        "wide": read_model(write_llama(tmp_path / "wide", hidden=16)),
    }
    matrix = compatibility_matrix(models)
    assert matrix["models"] == ["base", "tuned", "wide"]
    pairs = {(p["a"], p["b"]): p for p in matrix["pairs"]}
    assert set(pairs) == {("base", "tuned"), ("base", "wide"), ("tuned", "wide")}
    assert pairs["base", "tuned"]["weight_merge"]["ok"]
    assert not pairs["tuned", "wide"]["weight_merge"]["ok"]
    with pytest.raises(ValueError, match="two or more"):
        compatibility_matrix({"base": base})


def test_adapter_rank_pattern_and_saved_modules(base, tmp_path):
    import json

    tensors = lora_tensors(r=4)
    v = "base_model.model.model.layers.1.self_attn.v_proj"
    tensors[f"{v}.lora_A.weight"] = np.zeros((2, 8), np.float32)  # rank_pattern gives layer 1's v_proj r=2
    tensors[f"{v}.lora_B.weight"] = np.zeros((4, 2), np.float32)
    tensors["base_model.model.lm_head.weight"] = np.zeros((32, 8), np.float32)  # modules_to_save
    folder = write_adapter(tmp_path / "lora", tensors, r=4)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["rank_pattern"] = {"model.layers.1.self_attn.v_proj": 2}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert pair_compatibility(base, read_model(folder))["adapter"]["reasons"] == []

    tensors["base_model.model.lm_head.weight"] = np.zeros((33, 8), np.float32)
    folder = write_adapter(tmp_path / "lora2", tensors, r=4)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    reasons = pair_compatibility(base, read_model(folder))["adapter"]["reasons"]
    assert reasons == ["lm_head.weight: [33, 8] in the adapter vs [32, 8] in the base"]


def test_adapter_on_the_wrong_base_lists_the_first_problems(tmp_path):
    # 3 layers x 2 modules x (wrong inputs, wrong outputs): 12 problems, 10 listed.
    wide = read_model(write_llama(tmp_path / "wide", hidden=16, layers=3))
    adapter = read_model(write_adapter(tmp_path / "lora", lora_tensors(layers=3)))
    reasons = pair_compatibility(adapter, wide)["adapter"]["reasons"]
    assert len(reasons) == 11 and reasons[-1] == "and 2 more problems"
    assert reasons[0] == ("model.layers.0.self_attn.q_proj: lora_A [2, 8] expects 8 inputs, "
                          "base weight [16, 16] has 16")
