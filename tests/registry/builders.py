"""Tiny model folders for the registry engine's tests: real safetensors files written with
`safetensors.numpy.save_file`, raw bytes for broken ones, and tensor-name layouts exactly as
the real architectures name them (checked against transformers in test_components.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

Spec = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, numpy dtype; or safetensors dtype, sparse)

NP_DTYPES = {"F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32", "U8": "uint8", "I8": "int8"}


def write_raw(path: Path, header: dict | bytes | str, data: bytes | int = b"",
              length: int | None = None) -> Path:
    """A safetensors file from parts: `length` overrides the 8-byte length field."""
    if isinstance(header, dict):
        header = json.dumps(header)
    raw = header.encode() if isinstance(header, str) else header
    body = bytes(data) if isinstance(data, int) else data
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)
    return path


def save(path: Path, spec: Spec, metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file of zeros with these names and shapes."""
    arrays = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in spec.items()}
    save_file(arrays, str(path), metadata=metadata)
    return path


def write_model(folder: Path, spec: Spec, config: dict | None = None, shards: int = 1,
                metadata: dict[str, str] | None = None) -> Path:
    """A Hugging Face folder: config.json, model.safetensors or shards with their index."""
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    names = list(spec)
    if shards == 1:
        save(folder / "model.safetensors", spec, metadata)
        return folder
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: spec[n] for n in names[i * per:(i + 1) * per]}
        save(folder / file, part, metadata)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder


# --------------------------------------------------------------------------- real layouts


def llama(layers: int = 2, hidden: int = 8, inter: int = 16, vocab: int = 32, kv: int = 4,
          prefix: str = "model.", head: str | None = "lm_head.weight", dtype: str = "float32") -> Spec:
    """LlamaForCausalLM's names (Mistral and Qwen2 without biases use the same)."""
    spec: Spec = {f"{prefix}embed_tokens.weight": ((vocab, hidden), dtype)}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        spec.update({
            f"{p}self_attn.q_proj.weight": ((hidden, hidden), dtype),
            f"{p}self_attn.k_proj.weight": ((kv, hidden), dtype),
            f"{p}self_attn.v_proj.weight": ((kv, hidden), dtype),
            f"{p}self_attn.o_proj.weight": ((hidden, hidden), dtype),
            f"{p}mlp.gate_proj.weight": ((inter, hidden), dtype),
            f"{p}mlp.up_proj.weight": ((inter, hidden), dtype),
            f"{p}mlp.down_proj.weight": ((hidden, inter), dtype),
            f"{p}input_layernorm.weight": ((hidden,), dtype),
            f"{p}post_attention_layernorm.weight": ((hidden,), dtype),
        })
    spec[f"{prefix}norm.weight"] = ((hidden,), dtype)
    if head:
        spec[head] = ((vocab, hidden), dtype)
    return spec


def llama_config(layers: int = 2, hidden: int = 8, vocab: int = 32, **extra) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
            "num_hidden_layers": layers, "vocab_size": vocab, "tie_word_embeddings": False, **extra}


def gpt2(layers: int = 2, hidden: int = 8, vocab: int = 32, positions: int = 16) -> Spec:
    """GPT2LMHeadModel as saved (the tied lm_head is left out of the file)."""
    spec: Spec = {"transformer.wte.weight": ((vocab, hidden), "float32"),
                  "transformer.wpe.weight": ((positions, hidden), "float32")}
    for i in range(layers):
        p = f"transformer.h.{i}."
        spec.update({
            f"{p}ln_1.weight": ((hidden,), "float32"), f"{p}ln_1.bias": ((hidden,), "float32"),
            f"{p}attn.c_attn.weight": ((hidden, 3 * hidden), "float32"),
            f"{p}attn.c_attn.bias": ((3 * hidden,), "float32"),
            f"{p}attn.c_proj.weight": ((hidden, hidden), "float32"),
            f"{p}attn.c_proj.bias": ((hidden,), "float32"),
            f"{p}ln_2.weight": ((hidden,), "float32"), f"{p}ln_2.bias": ((hidden,), "float32"),
            f"{p}mlp.c_fc.weight": ((hidden, 4 * hidden), "float32"),
            f"{p}mlp.c_fc.bias": ((4 * hidden,), "float32"),
            f"{p}mlp.c_proj.weight": ((4 * hidden, hidden), "float32"),
            f"{p}mlp.c_proj.bias": ((hidden,), "float32"),
        })
    spec["transformer.ln_f.weight"] = ((hidden,), "float32")
    spec["transformer.ln_f.bias"] = ((hidden,), "float32")
    return spec


def gpt2_config(layers: int = 2, hidden: int = 8, vocab: int = 32) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": hidden, "n_layer": layers,
            "vocab_size": vocab}


def bert(layers: int = 2, hidden: int = 8, inter: int = 16, vocab: int = 32, positions: int = 16) -> Spec:
    """BertModel."""
    f = "float32"
    spec: Spec = {
        "embeddings.word_embeddings.weight": ((vocab, hidden), f),
        "embeddings.position_embeddings.weight": ((positions, hidden), f),
        "embeddings.token_type_embeddings.weight": ((2, hidden), f),
        "embeddings.LayerNorm.weight": ((hidden,), f), "embeddings.LayerNorm.bias": ((hidden,), f),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            spec[f"{p}attention.self.{part}.weight"] = ((hidden, hidden), f)
            spec[f"{p}attention.self.{part}.bias"] = ((hidden,), f)
        spec.update({
            f"{p}attention.output.dense.weight": ((hidden, hidden), f),
            f"{p}attention.output.dense.bias": ((hidden,), f),
            f"{p}attention.output.LayerNorm.weight": ((hidden,), f),
            f"{p}attention.output.LayerNorm.bias": ((hidden,), f),
            f"{p}intermediate.dense.weight": ((inter, hidden), f),
            f"{p}intermediate.dense.bias": ((inter,), f),
            f"{p}output.dense.weight": ((hidden, inter), f),
            f"{p}output.dense.bias": ((hidden,), f),
            f"{p}output.LayerNorm.weight": ((hidden,), f),
            f"{p}output.LayerNorm.bias": ((hidden,), f),
        })
    spec["pooler.dense.weight"] = ((hidden, hidden), f)
    spec["pooler.dense.bias"] = ((hidden,), f)
    return spec


def bert_config(layers: int = 2, hidden: int = 8, vocab: int = 32) -> dict:
    return {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": hidden,
            "num_hidden_layers": layers, "vocab_size": vocab}


def llava(vision_layers: int = 2, text_layers: int = 2, vision_prefix: str = "vision_tower.vision_model.",
          text_prefix: str = "language_model.model.", projector: str = "multi_modal_projector.",
          head: str = "language_model.lm_head.weight") -> Spec:
    """LlavaForConditionalGeneration as llava-hf checkpoints name it (CLIP vision tower,
    two-layer projector, Llama language model); pass the `model.` prefixes for the newer layout."""
    f, v, h = "float32", 8, 8
    spec: Spec = {
        f"{vision_prefix}embeddings.class_embedding": ((v,), f),
        f"{vision_prefix}embeddings.patch_embedding.weight": ((v, 3, 2, 2), f),
        f"{vision_prefix}embeddings.position_embedding.weight": ((5, v), f),
        f"{vision_prefix}pre_layrnorm.weight": ((v,), f), f"{vision_prefix}pre_layrnorm.bias": ((v,), f),
    }
    for i in range(vision_layers):
        p = f"{vision_prefix}encoder.layers.{i}."
        for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
            spec[f"{p}self_attn.{part}.weight"] = ((v, v), f)
            spec[f"{p}self_attn.{part}.bias"] = ((v,), f)
        spec.update({
            f"{p}layer_norm1.weight": ((v,), f), f"{p}layer_norm1.bias": ((v,), f),
            f"{p}mlp.fc1.weight": ((2 * v, v), f), f"{p}mlp.fc1.bias": ((2 * v,), f),
            f"{p}mlp.fc2.weight": ((v, 2 * v), f), f"{p}mlp.fc2.bias": ((v,), f),
            f"{p}layer_norm2.weight": ((v,), f), f"{p}layer_norm2.bias": ((v,), f),
        })
    spec[f"{vision_prefix}post_layernorm.weight"] = ((v,), f)
    spec[f"{vision_prefix}post_layernorm.bias"] = ((v,), f)
    spec.update({
        f"{projector}linear_1.weight": ((h, v), f), f"{projector}linear_1.bias": ((h,), f),
        f"{projector}linear_2.weight": ((h, h), f), f"{projector}linear_2.bias": ((h,), f),
    })
    spec.update(llama(layers=text_layers, hidden=h, prefix=text_prefix, head=head))
    return spec


def llava_config(text_layers: int = 2) -> dict:
    return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
            "text_config": {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": text_layers,
                            "vocab_size": 32},
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 8, "num_hidden_layers": 2}}


def tokenizer_files(folder: Path, vocab: int = 30, added: int = 2, chat_template: bool = True) -> None:
    """A BPE tokenizer.json with `vocab` tokens plus `added` added tokens, and its config."""
    tokens = {f"t{i}": i for i in range(vocab)}
    added_tokens = [{"id": vocab + i, "content": f"<s{i}>", "special": True} for i in range(added)]
    model = {"type": "BPE", "vocab": tokens, "merges": []}
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "added_tokens": added_tokens,
                                                       "model": model}))
    config = {"bos_token": "<s0>", "eos_token": {"content": "<s1>", "special": True}, "pad_token": None,
              "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template:
        config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": "<unk>", "pad_token": "<s1>"}))


def write_sparse(path: Path, spec: Spec, aliases: dict[str, str] | None = None,
                 metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file from a header alone, in any safetensors dtype ("BF16", "F8_E4M3", ...):
    the data section is a hole (sparse), so big shapes cost nothing on disk. `aliases` maps a
    name to the tensor whose bytes it shares (a tied head)."""
    from apps.registry.engine.types import DTYPE_BYTES

    header: dict = {"__metadata__": metadata} if metadata else {}
    position = 0
    for name, (shape, dtype) in spec.items():
        numel = 1
        for d in shape:
            numel *= d
        size = (numel * round(DTYPE_BYTES[dtype] * 8) + 7) // 8
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + size]}
        position += size
    for name, target in (aliases or {}).items():
        header[name] = dict(header[target])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + position)
    return path
