import json

import pytest


@pytest.fixture
def model_dir(tmp_path):
    """A small Hugging Face-shaped folder."""
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                               "hidden_size": 64, "num_hidden_layers": 2}))
    header = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    (d / "model.safetensors").write_bytes(header + bytes(range(256)) * 40)
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    return d


@pytest.fixture
def fresh_library(settings, tmp_path):
    """Point the library at an empty store (the database is per test anyway)."""
    home = tmp_path / "home2"
    (home / "store").mkdir(parents=True)
    (home / "work").mkdir()
    (home / "cache").mkdir()
    settings.AUDOBON_HOME = home
    return home
