"""What a model folder (or a single .safetensors file) holds, from headers and small JSON
files only: the tensors of every shard, config.json, the PEFT adapter config, tokenizer
facts, pickle checkpoints (listed, never opened) and quantized tensors.

Which safetensors files are the model's weights, in order of preference:
    model.safetensors.index.json    the shards it names (each must exist and hold what it maps)
    adapter_config.json             adapter_model.safetensors (a PEFT adapter)
    model.safetensors               that file alone
    otherwise                       every *.safetensors in the folder, merged
Other *.safetensors beside the chosen ones are listed in `extra_safetensors` and not read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .header import (
    BadIndexError,
    DuplicateTensorError,
    MissingShardError,
    read_header,
)
from .types import ModelFiles, TensorInfo

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_WARNING = "pickle weights are not read; convert to safetensors"
# Small JSON files (config, adapter config, tokenizer config) are never legitimately this big.
MAX_JSON_BYTES = 16 * 1024 * 1024
# tokenizer.json of a 256k-vocabulary model is ~35 MB; an index of a huge MoE ~10 MB.
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
SPECIAL_TOKENS = ("bos", "eos", "pad", "unk")
# model_max_length above this is transformers' "no limit" sentinel (int(1e30)).
NO_LIMIT = 10**12

# Parameter suffixes of quantized checkpoints: GPTQ/AWQ (qweight, qzeros, scales, g_idx),
# bitsandbytes 4-bit (absmax, quant_map, quant_state.*) and 8-bit (SCB), FP8 (weight_scale).
QUANT_SUFFIXES = (
    ".qweight", ".qzeros", ".scales", ".g_idx", ".absmax", ".quant_map", ".nested_absmax",
    ".nested_quant_map", ".weight_scale", ".weight_scale_inv", ".input_scale", ".SCB", ".weight_format",
)
LOW_BIT_DTYPES = frozenset({"I8", "U8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})


def read_model(path: Path) -> ModelFiles:
    """Read a model folder or a single .safetensors file, headers only.

    Header and index defects raise `HeaderError` subclasses; everything softer (a missing
    config, pickle files, quantized tensors, unreadable tokenizer files) becomes a warning.
    """
    path = Path(path)
    if path.is_file():
        return _read_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder or file")
    root = path
    names = _file_names(root)
    model = ModelFiles(root=root, config=None, tensors={}, shards=[])
    model.config = _read_json_warn(root, "config.json", model.warnings)
    model.adapter_config = _read_json_warn(root, "adapter_config.json", model.warnings)
    model.generation_config = _read_json_warn(root, "generation_config.json", model.warnings)
    model.pickle_files = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    model.tokenizer = read_tokenizer(root, names, model.warnings)

    safetensors = [n for n in names if n.endswith(".safetensors")]
    index = _index_name(names)
    if index:
        model.shards = _read_index(root, index, names, model)
    else:
        if model.adapter_config is not None and "adapter_model.safetensors" in names:
            chosen = ["adapter_model.safetensors"]
        elif "model.safetensors" in names:
            chosen = ["model.safetensors"]
        else:
            chosen = safetensors
        model.shards = chosen
        for shard in chosen:
            _add_shard(model, root / shard)
    model.extra_safetensors = [n for n in safetensors if n not in model.shards]
    if model.extra_safetensors:
        extra = ", ".join(model.extra_safetensors)
        model.warnings.append(f"not part of the model's weights, not read: {extra}")
    if model.pickle_files:
        model.warnings.append(f"{PICKLE_WARNING} ({', '.join(model.pickle_files)})")
    if not model.shards and not model.pickle_files:
        model.warnings.append("no weights found (no .safetensors or pickle checkpoint)")
    _warn_quantized(model)
    return model


def _read_file(path: Path) -> ModelFiles:
    model = ModelFiles(root=path.parent, config=None, tensors={}, shards=[])
    model.tokenizer = read_tokenizer(path.parent, [], model.warnings)  # every key, all empty
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        model.pickle_files = [path.name]
        model.warnings.append(f"{PICKLE_WARNING} ({path.name})")
        return model
    model.shards = [path.name]
    _add_shard(model, path)
    _warn_quantized(model)
    return model


def _file_names(root: Path) -> list[str]:
    # Top level only; links are followed (an HF snapshot is all symlinks into blobs/).
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_file())


def _add_shard(model: ModelFiles, path: Path) -> dict[str, TensorInfo]:
    tensors, metadata = read_header(path)
    for name, info in tensors.items():
        if name in model.tensors:
            other = model.tensors[name].file
            raise DuplicateTensorError(f"{path}: tensor {name!r} is also in {other}")
        model.tensors[name] = info
    model.metadata[path.name] = metadata
    return tensors


def _index_name(names: list[str]) -> str | None:
    if INDEX_NAME in names:
        return INDEX_NAME
    others = [n for n in names if n.endswith(".safetensors.index.json")]
    return others[0] if len(others) == 1 else None


def _read_index(root: Path, index: str, names: list[str], model: ModelFiles) -> list[str]:
    """The shards the index names, each read and checked against the index's weight map."""
    path = root / index
    data = _read_json(path, MAX_INDEX_BYTES)
    if isinstance(data, str):
        raise BadIndexError(f"{path}: {data}")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise BadIndexError(f"{path}: no 'weight_map' of tensor name to shard file")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        # A shard is a plain file beside the index; a path could read outside the model.
        if not shard or "/" in shard or "\\" in shard or shard in (".", ".."):
            raise BadIndexError(f"{path}: shard {shard!r} is not a plain file name")
        if shard not in names:
            raise MissingShardError(f"{path}: names shard {shard}, which is not in {root}")
    held: dict[str, set[str]] = {}
    for shard in shards:
        held[shard] = set(_add_shard(model, root / shard))
    for name, shard in weight_map.items():
        if name not in held[shard]:
            raise BadIndexError(f"{path}: maps tensor {name!r} to {shard}, whose header does not hold it")
    unmapped = sorted(set(model.tensors) - set(weight_map))
    if unmapped:
        model.warnings.append(f"{len(unmapped)} tensors are in the shards but not in {index} "
                              f"(e.g. {unmapped[0]})")
    total = data.get("metadata", {}).get("total_size") if isinstance(data.get("metadata"), dict) else None
    actual = sum(t.nbytes for t in model.tensors.values())
    if type(total) is int and total != actual:
        model.warnings.append(f"{index} says total_size {total} bytes, the shards hold {actual}")
    return shards


def _read_json(path: Path, limit: int = MAX_JSON_BYTES) -> object:
    """The parsed file, or a string saying why it could not be read."""
    try:
        size = path.stat().st_size
        if size > limit:
            return f"{path.name} is {size} bytes, above the {limit}-byte limit; not read"
        with open(path, "rb") as f:
            return json.loads(f.read(limit + 1))
    except (OSError, ValueError, RecursionError) as err:
        return f"{path.name} could not be read as JSON ({type(err).__name__}: {err})"


def _read_json_warn(root: Path, name: str, warnings: list[str]) -> dict | None:
    path = root / name
    if not path.is_file():
        return None
    data = _read_json(path)
    if isinstance(data, str):
        warnings.append(data)
        return None
    if not isinstance(data, dict):
        warnings.append(f"{name} is not a JSON object; ignored")
        return None
    return data


# --------------------------------------------------------------------------------- tokenizer


def read_tokenizer(root: Path, names: list[str], warnings: list[str]) -> dict:
    """Tokenizer facts from its files, without transformers:
    `{"files", "type", "vocab_size", "added_tokens", "special_tokens": {bos, eos, pad, unk},
    "chat_template", "max_length", "tokenizer_class"}` (all keys always present).

    `vocab_size` counts distinct token ids: the model vocabulary plus added tokens that are
    not already in it (BERT's [CLS] etc. are both).
    """
    facts: dict = {
        "files": [n for n in TOKENIZER_FILES if n in names],
        "type": None, "vocab_size": None, "added_tokens": 0,
        "special_tokens": dict.fromkeys(SPECIAL_TOKENS),
        "chat_template": "chat_template.jinja" in names or "chat_template.json" in names,
        "max_length": None, "tokenizer_class": None,
    }
    ids: set[int] = set()
    added: set[int] = set()
    if "tokenizer.json" in names:
        data = _read_json(root / "tokenizer.json", MAX_TOKENIZER_BYTES)
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            facts["type"] = data["model"].get("type")
            ids = _vocab_ids(data["model"].get("vocab"))
            added |= {t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict)
                      and type(t.get("id")) is int}
        else:
            warnings.append(data if isinstance(data, str) else "tokenizer.json has no 'model' object")
    elif "vocab.txt" in names:
        ids = set(range(_count_lines(root / "vocab.txt")))
        facts["type"] = "WordPiece"
    elif "vocab.json" in names:
        data = _read_json(root / "vocab.json", MAX_TOKENIZER_BYTES)
        ids = _vocab_ids(data) if isinstance(data, dict) else set()
        facts["type"] = "BPE"
    elif "tokenizer.model" in names:
        count, kind = _sentencepiece_facts(root / "tokenizer.model")
        ids, facts["type"] = set(range(count)), kind

    config = None
    if "tokenizer_config.json" in names:
        config = _read_json_warn(root, "tokenizer_config.json", warnings)
    if config:
        facts["tokenizer_class"] = config.get("tokenizer_class") if isinstance(
            config.get("tokenizer_class"), str) else None
        facts["chat_template"] = facts["chat_template"] or bool(config.get("chat_template"))
        length = config.get("model_max_length")
        if isinstance(length, int | float) and not isinstance(length, bool) and 0 < length < NO_LIMIT:
            facts["max_length"] = int(length)
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            added |= {int(k) for k in decoder if str(k).isdigit()}
        for key in SPECIAL_TOKENS:
            facts["special_tokens"][key] = _token_text(config.get(f"{key}_token"))
    if "special_tokens_map.json" in names:
        special = _read_json_warn(root, "special_tokens_map.json", warnings) or {}
        tokens = facts["special_tokens"]
        for key in SPECIAL_TOKENS:
            tokens[key] = tokens[key] or _token_text(special.get(f"{key}_token"))
    facts["added_tokens"] = len(added)
    if ids or added:
        facts["vocab_size"] = len(ids | added)
    return facts


def _vocab_ids(vocab: object) -> set[int]:
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        return {v for v in vocab.values() if type(v) is int}
    if isinstance(vocab, list):  # Unigram: [[token, score], ...], id = position
        return set(range(len(vocab)))
    return set()


def _token_text(value: object) -> str | None:
    # A special token is a string, or a serialized AddedToken {"content": ..., ...}.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
            if f.tell() > MAX_TOKENIZER_BYTES:
                break
    return count + (last != b"\n")


def _sentencepiece_facts(path: Path) -> tuple[int, str | None]:
    """Pieces and model type of a sentencepiece ModelProto, walked as raw protobuf: field 1
    is a repeated piece, field 2 the TrainerSpec whose field 3 is the model type."""
    try:
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            return 0, None
        data = path.read_bytes()
        pieces, kind = 0, None
        for field, value in _proto_fields(data):
            if field == 1:
                pieces += 1
            elif field == 2 and isinstance(value, bytes):
                for sub, sub_value in _proto_fields(value):
                    if sub == 3 and isinstance(sub_value, int):
                        kind = {1: "Unigram", 2: "BPE", 3: "WordLevel", 4: "Char"}.get(sub_value)
        return pieces, kind
    except (OSError, ValueError):
        return 0, None


def _proto_fields(data: bytes):
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("protobuf field runs past the end")
        yield field, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


# ------------------------------------------------------------------------------ quantization


def quantization(model: ModelFiles) -> dict | None:
    """Which tensors are quantized and by what scheme, or None.

    `{"method", "tensors": count, "examples": [...], "config_method"}`; `method` is the
    config's `quantization_config.quant_method` when there is one, else a guess from the
    tensor names and dtypes (gptq, awq, bitsandbytes-4bit, bitsandbytes-8bit, fp8, int8).
    """
    names = [name for name, info in model.tensors.items() if is_quantized(name, info)]
    config_method = None
    for config in (model.config or {}, (model.config or {}).get("text_config") or {}):
        qc = config.get("quantization_config") if isinstance(config, dict) else None
        if isinstance(qc, dict) and isinstance(qc.get("quant_method"), str):
            config_method = qc["quant_method"]
            break
    if not names and not config_method:
        return None
    return {
        "method": config_method or _guess_method(names, model.tensors),
        "tensors": len(names),
        "examples": names[:5],
        "config_method": config_method,
    }


def is_quantized(name: str, info: TensorInfo) -> bool:
    if name.endswith(QUANT_SUFFIXES) or ".quant_state." in name:
        return True
    return info.dtype in LOW_BIT_DTYPES and len(info.shape) >= 2 and name.endswith(".weight")


def _guess_method(names: list[str], tensors: dict[str, TensorInfo]) -> str:
    suffixes = {name.rsplit(".", 1)[-1] for name in names}
    if "qweight" in suffixes:
        return "gptq" if "g_idx" in suffixes else "awq"
    if suffixes & {"absmax", "quant_map"} or any(".quant_state." in n for n in names):
        return "bitsandbytes-4bit"
    if "SCB" in suffixes:
        return "bitsandbytes-8bit"
    fp8 = any(tensors[n].dtype.startswith("F8") for n in names)
    if fp8 or suffixes & {"weight_scale", "weight_scale_inv"}:
        return "fp8"
    return "int8"


def _warn_quantized(model: ModelFiles) -> None:
    quant = quantization(model)
    if quant and quant["tensors"]:
        model.warnings.append(
            f"{quant['tensors']} quantized tensors ({quant['method']}): parameter counts are of stored "
            "elements, not of the unpacked weights")

