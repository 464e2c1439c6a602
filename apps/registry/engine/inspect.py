"""`inspect_model(path)`: everything the registry shows about a model, from safetensors
headers and small JSON files only (no torch, no transformers), as one JSON-ready dict.

Schema `audobon.inspect/1`. Every key below is always present; a value is null where the
model does not say. New keys may be added; none is renamed or removed within a version.

    {
      "schema": "audobon.inspect/1",
      "path": str,                      # the folder or file inspected
      "format": "safetensors" | "peft-adapter" | "pickle-only" | "none" | "gguf",
      "architecture": {
        "model_type": str | null,       # config.json model_type, or a guess from tensor names
        "architectures": [str],         # config.json architectures ([] when guessed)
        "source": "config" | "tensor-names",
      },
      "parameters": int | null,         # stored elements (packed when quantized); null: pickle-only
      "bytes": int | null,              # tensor data bytes
      "dtypes": {dtype: int},           # parameters per dtype
      "shards": [{"file": str, "tensors": int, "bytes": int, "metadata": {str: str}}],
      "components": [{                  # see components.py; children have the same keys
        "id": str, "kind": str, "layer": int | null, "params": int, "bytes": int,
        "dtypes": [str], "signature": str,
        "tensors": [{"name": str, "dtype": str, "shape": [int]}],
        "children": [...],
      }],
      "tokenizer": {"files", "type", "vocab_size", "added_tokens", "special_tokens":
                    {"bos", "eos", "pad", "unk"}, "chat_template", "max_length", "tokenizer_class"},
      "adapter": {"peft_type", "r", "lora_alpha", "target_modules", "base_model", "task_type",
                  "rank_found", "modules_found", "layers"} | null,
      "facts": {
        "tensors": int,
        "layers": {"found": int, "config": int | null, "missing": [int],
                   "stacks": [{"prefix": str, "layers": int, "vision": bool}]},
        "vocab": {"config", "tokenizer", "embedding_rows", "embedding_tensor", "padded", "padded_by"},
        "hidden_size": {"config": int | null, "embedding": int | null},
        "tied_embeddings": {"tied": bool | null, "reason": str},
        "aliases": [[str]],             # tensors naming the same bytes
        "quantization": {"method", "tensors", "examples", "config_method"} | null,
        "config_mismatches": [str],     # also in warnings; check_config(strict=True) raises them
        "pickle_files": [str],          # listed, never opened
        "extra_safetensors": [str],     # beside the weights, not read
        "generation_config": dict | null,
        "license_source": "readme" | "license-file" | "config" | null,
      },
      "warnings": [str],
      "license": str | null,            # README front matter `license:`, a LICENSE file's name, or config
    }

Header defects raise `HeaderError` subclasses (see header.py); a scan catches them per model.
"""

from __future__ import annotations

import re
from pathlib import Path

from .components import catalogue, facts
from .gguf import gguf_report
from .model import read_model
from .types import Component, ModelFiles

SCHEMA = "audobon.inspect/1"
MAX_README_BYTES = 64 * 1024  # the front matter is at the top
LICENSE_FILE = re.compile(r"(licen[cs]e|copying)(\.(txt|md|rst))?", re.IGNORECASE)

# Guesses when config.json is missing: the first family whose tell-tale name is present.
NAME_PATTERNS: list[tuple[str, re.Pattern]] = [(family, re.compile(pattern)) for family, pattern in (
    ("llava", r"(^|\.)multi_modal_projector\."),
    ("mixtral", r"(^|\.)layers\.\d+\.block_sparse_moe\.experts\.\d+\."),
    ("t5", r"(^|\.)(encoder|decoder)\.block\.\d+\.layer\.\d+\."),
    ("bert", r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query\."),
    ("falcon", r"(^|\.)h\.\d+\.self_attention\.query_key_value\."),
    ("gpt2", r"(^|\.)h\.\d+\.attn\.c_attn\."),
    ("gpt_neox", r"(^|\.)gpt_neox\.layers\.\d+\."),
    ("opt", r"(^|\.)decoder\.layers\.\d+\.self_attn\.q_proj\."),
    ("phi3", r"(^|\.)layers\.\d+\.self_attn\.qkv_proj\."),
    ("qwen2", r"(^|\.)layers\.\d+\.self_attn\.q_proj\.bias$"),
    ("llama", r"(^|\.)layers\.\d+\.self_attn\.q_proj\."),
)]


def inspect_model(path: Path) -> dict:
    """The `audobon.inspect/1` description of the model at `path` (a folder or a .safetensors
    file, or a .gguf file: see gguf.gguf_report). Raises HeaderError subclasses for broken
    headers or indexes."""
    path = Path(path)
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        return gguf_report(path)
    model = read_model(path)
    components = catalogue(model)
    found = facts(model, components)
    warnings = list(model.warnings)
    architecture = _architecture(model, warnings)
    warnings.extend(found["config_mismatches"])
    license_id, license_source = _license(model) if path.is_dir() else (None, None)
    has_weights = bool(model.shards)
    return {
        "schema": SCHEMA,
        "path": str(path),
        "format": _format(model),
        "architecture": architecture,
        "parameters": found["parameters"] if has_weights else None,
        "bytes": found["bytes"] if has_weights else None,
        "dtypes": found["dtypes"],
        "shards": [_shard(model, shard) for shard in model.shards],
        "components": [component_json(c, model) for c in components],
        "tokenizer": model.tokenizer,
        "adapter": found["adapter"],
        "facts": {
            "tensors": found["tensors"],
            "layers": found["layers"],
            "vocab": found["vocab"],
            "hidden_size": found["hidden_size"],
            "tied_embeddings": found["tied_embeddings"],
            "aliases": found["aliases"],
            "quantization": found["quantization"],
            "config_mismatches": found["config_mismatches"],
            "pickle_files": list(model.pickle_files),
            "extra_safetensors": list(model.extra_safetensors),
            "generation_config": model.generation_config,
            "license_source": license_source,
        },
        "warnings": warnings,
        "license": license_id,
    }


def component_json(component: Component, model: ModelFiles) -> dict:
    return {
        "id": component.id,
        "kind": component.kind,
        "layer": component.layer,
        "params": component.params,
        "bytes": component.bytes,
        "dtypes": list(component.dtypes),
        "signature": component.signature,
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
                    for t in (model.tensors[name] for name in component.tensors)],
        "children": [component_json(child, model) for child in component.children],
    }


def _format(model: ModelFiles) -> str:
    if model.shards:
        return "peft-adapter" if model.adapter_config is not None else "safetensors"
    return "pickle-only" if model.pickle_files else "none"


def _shard(model: ModelFiles, shard: str) -> dict:
    held = [t for t in model.tensors.values() if t.file == shard]
    return {"file": shard, "tensors": len(held), "bytes": sum(t.nbytes for t in held),
            "metadata": model.metadata.get(shard, {})}


def _architecture(model: ModelFiles, warnings: list[str]) -> dict:
    config = model.config
    if config and (config.get("model_type") or config.get("architectures")):
        architectures = config.get("architectures")
        return {
            "model_type": config.get("model_type") if isinstance(config.get("model_type"), str) else None,
            "architectures": [a for a in architectures if isinstance(a, str)]
            if isinstance(architectures, list) else [],
            "source": "config",
        }
    guess = guess_model_type(model.tensors)
    if model.tensors and model.adapter_config is None:
        what = "config.json has no model_type" if config else "no config.json"
        warnings.append(f"{what}: architecture {'guessed as ' + guess if guess else 'unknown'} "
                        "from tensor names")
    return {"model_type": guess, "architectures": [], "source": "tensor-names"}


def guess_model_type(names: dict | list) -> str | None:
    """The model family whose characteristic tensor names appear, or None."""
    for family, pattern in NAME_PATTERNS:
        if any(pattern.search(name) for name in names):
            return family
    return None


def _license(model: ModelFiles) -> tuple[str | None, str | None]:
    root = model.root
    for name in ("README.md", "readme.md", "README"):
        readme = root / name
        if readme.is_file():
            with open(readme, "rb") as f:
                text = f.read(MAX_README_BYTES).decode("utf-8", errors="replace")
            found = _front_matter_license(text)
            if found:
                return found, "readme"
            break
    with_license = sorted(p.name for p in root.iterdir() if p.is_file() and LICENSE_FILE.fullmatch(p.name))
    if with_license:
        return with_license[0], "license-file"
    value = (model.config or {}).get("license")
    if isinstance(value, str) and value:
        return value, "config"
    return None, None


def _front_matter_license(text: str) -> str | None:
    """`license:` in a README's YAML front matter (`license: mit`, or a one-item list)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return None
        match = re.fullmatch(r"license:\s*(.*?)\s*", line)
        if match:
            value = match.group(1).strip("'\"")
            if not value and i + 1 < len(lines):  # a YAML list on the next line
                value = lines[i + 1].strip().removeprefix("- ").strip("'\"")
            return value or None
    return None
