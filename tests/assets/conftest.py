import json

import numpy as np
import pytest
from safetensors.numpy import save_file


@pytest.fixture
def model_dir(tmp_path):
    """A small Hugging Face-shaped folder."""
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                               "hidden_size": 64, "num_hidden_layers": 2}))
    save_file({"model.embed_tokens.weight": np.arange(64 * 16, dtype=np.float32).reshape(64, 16)},
              str(d / "model.safetensors"))
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    return d
