"""Tiny Llama-named models on disk for registry tests and the browser suite (no Django)."""

import json

import numpy as np
from safetensors.numpy import save_file


def llama_like(folder, *, hidden=16, layers=2, vocab=64, seed=0, scale=0.0, base=None):
    """A tiny Llama-named model; with `base`, base's tensors plus `scale` noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    if base is None:
        tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32),
                   "model.norm.weight": np.ones(hidden, np.float32),
                   "lm_head.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
        for i in range(layers):
            p = f"model.layers.{i}."
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
                tensors[p + name + ".weight"] = rng.standard_normal((hidden, hidden), dtype=np.float32)
            tensors[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
            tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    else:
        from safetensors.numpy import load_file

        tensors = {k: (v + scale * rng.standard_normal(v.shape).astype(np.float32))
                   for k, v in load_file(str(base / "model.safetensors")).items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
        "num_hidden_layers": layers, "vocab_size": vocab, "intermediate_size": hidden,
        "num_attention_heads": 2, "tie_word_embeddings": False}))
    return folder
