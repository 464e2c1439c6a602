"""Tiny safetensors models written at test time (a few KB each) for the compatibility
and diff tests: Llama-named tensors with a consistent config.json, and PEFT adapters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

LLAMA_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_tensors(
    *, hidden: int = 8, inter: int = 16, layers: int = 2, vocab: int = 32, heads: int = 2, kv_heads: int = 1,
    seed: int = 0, dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    shapes = {
        "q_proj": (hidden, hidden), "k_proj": (kv, hidden),
        "v_proj": (kv, hidden), "o_proj": (hidden, hidden),
        "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter),
    }
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)),
         "model.norm.weight": np.ones(hidden),
         "lm_head.weight": rng.standard_normal((vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        for part in LLAMA_PARTS:
            group = "self_attn" if part in LLAMA_PARTS[:4] else "mlp"
            t[f"{p}{group}.{part}.weight"] = rng.standard_normal(shapes[part]) * 0.1
        t[p + "input_layernorm.weight"] = np.ones(hidden)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden)
    return {k: v.astype(dtype) for k, v in t.items()}


def llama_config(*, hidden: int = 8, inter: int = 16, layers: int = 2, vocab: int = 32, heads: int = 2,
                 kv_heads: int = 1, **_: object) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": False,
    }


def write_model(folder: Path, tensors: dict[str, np.ndarray], config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_llama(folder: Path, **kw: object) -> Path:
    return write_model(folder, llama_tensors(**kw), llama_config(**kw))


def write_adapter(folder: Path, tensors: dict[str, np.ndarray], *, r: int = 2,
                  targets: list[str] | str = ("q_proj", "v_proj")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
              "target_modules": list(targets) if not isinstance(targets, str) else targets,
              "base_model_name_or_path": "tiny-llama", "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def lora_tensors(*, hidden: int = 8, kv: int = 4, layers: int = 2, r: int = 2,
                 modules: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, np.ndarray]:
    """PEFT-named LoRA tensors fitting `llama_tensors(hidden=hidden, heads=2, kv_heads=1)`."""
    out_dim = {"q_proj": hidden, "k_proj": kv, "v_proj": kv, "o_proj": hidden}
    t = {}
    for i in range(layers):
        for m in modules:
            p = f"base_model.model.model.layers.{i}.self_attn.{m}"
            t[f"{p}.lora_A.weight"] = np.full((r, hidden), 0.01, np.float32)
            t[f"{p}.lora_B.weight"] = np.zeros((out_dim[m], r), np.float32)
    return t
