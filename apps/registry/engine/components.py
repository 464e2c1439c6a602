"""The components a model's tensors group into, found from the structure of the names alone,
so an architecture nobody listed still gets its blocks:

- a block stack is a name prefix followed by a numeric segment (`model.layers.{i}.`,
  `transformer.h.{i}.`, `encoder.layer.{i}.`, `...vision_model.encoder.layers.{i}.`): the
  first numeric segment of a name makes it part of block `{prefix}.{i}` (deeper numbers,
  such as MoE experts, stay inside the block). A model may have several stacks (text and
  vision, encoder and decoder). Numbered children of a projector or head (`mm_projector.0`,
  `classifier.2`) are layers of that part, not blocks.
- inside a block, each tensor goes to a child by its module path: any norm module makes it
  a norm; otherwise the first module naming attention or an MLP decides; else "other".
- outside blocks: projector > vision > head > embedding > final norm > other, by keywords
  in the module path, one component of each kind.

`signature` hashes the sorted (name relative to the component's prefix, shape, dtype)
triples, so layer 3 of one Llama equals layer 5 of another with the same shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from .header import ConfigMismatchError
from .lora_names import lora_name
from .model import is_quantized, quantization
from .types import Component, ModelFiles, TensorInfo

# Module-path keywords, matched against one lowercased name segment.
_NORM = re.compile(r".*norm.*|ln(_?[a-z0-9]+)?")
_ATTENTION = re.compile(
    r".*(attn|attention).*|q_proj|k_proj|v_proj|o_proj|qkv_proj|qkv|query|key|value|query_key_value"
    r"|wq|wk|wv|q|k|v|o")
_MLP = re.compile(
    r".*(mlp|ffn|feed_?forward|moe|expert|densereludense).*|gate_proj|up_proj|down_proj|gate_up_proj"
    r"|fc1|fc2|c_fc|intermediate|output|dense_h_to_4h|dense_4h_to_h|w1|w2|w3|gate|router|wi|wi_0|wi_1|wo")
_PROJECTOR = re.compile(r".*projector.*|connector|merger|aligner|mm_proj")
_VISION = re.compile(r".*(vision|visual|image_encoder).*")
_HEAD = re.compile(r"lm_head|embed_out|score|classifier|pooler|cls|qa_outputs|head|output_layer|.*_head")
_EMBEDDING = re.compile(r".*(embed|wte|wpe|token_type).*|shared")
# The token embedding among an embedding component's tensors (not positions or types).
_TOKEN_EMBEDDING = re.compile(r"embed_tokens|wte|word_embeddings|embed_in|tok_embeddings|shared"
                              r"|token_embedding|embeddings|embedding")
# A block's children, in this order; the id of each kind found outside blocks.
CHILD_KINDS = ("attention", "mlp", "norm", "other")
OUTSIDE = {"embedding": "embed", "norm": "final_norm", "head": "head", "vision": "vision",
           "projector": "projector", "other": "other"}
LM_ARCHITECTURES = re.compile(r"ForCausalLM|LMHeadModel|ForConditionalGeneration|ForMaskedLM|ForPreTraining")


def _is_index(segment: str) -> bool:
    return segment.isascii() and segment.isdigit()


def _natural(name: str) -> tuple:
    # "layers.10" after "layers.9"; ints and strings never compared with each other.
    return tuple((0, int(s), "") if _is_index(s) else (1, 0, s) for s in name.split("."))


def _matches(pattern: re.Pattern, segments: Iterable[str]) -> bool:
    return any(pattern.fullmatch(s.lower()) for s in segments)


def block_of(name: str) -> tuple[str, str] | None:
    """(stack prefix, layer segment) of the block a tensor belongs to, or None outside blocks."""
    segments = name.split(".")
    for i, segment in enumerate(segments[:-1]):
        if _is_index(segment):
            parents = segments[:i]
            if _matches(_PROJECTOR, parents) or _matches(_HEAD, parents):
                return None
            return ".".join(parents), segment
    return None


def signature(tensors: Iterable[TensorInfo], prefix: str) -> str:
    """16 hex chars of sha256 over the sorted (relative name, shape, dtype) triples."""
    triples = sorted((t.name[len(prefix):] if t.name.startswith(prefix) else t.name, list(t.shape), t.dtype)
                     for t in tensors)
    return hashlib.sha256(json.dumps(triples).encode()).hexdigest()[:16]


def _component(cid: str, kind: str, layer: int | None, infos: list[TensorInfo], prefix: str,
               children: list[Component] | None = None) -> Component:
    return Component(
        id=cid, kind=kind, layer=layer, tensors=[t.name for t in infos],
        params=sum(t.numel for t in infos), bytes=sum(t.nbytes for t in infos),
        dtypes=sorted({t.dtype for t in infos}), signature=signature(infos, prefix),
        children=children or [], prefix=prefix,
    )


def _child_kind(relative: str) -> str:
    modules = [s.lower() for s in relative.split(".")[:-1]]  # the last segment is the parameter
    if any(_NORM.fullmatch(s) for s in modules):
        return "norm"
    for s in modules:
        if _ATTENTION.fullmatch(s):
            return "attention"
        if _MLP.fullmatch(s):
            return "mlp"
    return "other"


def _outside_kind(name: str) -> str:
    modules = name.split(".")[:-1]
    for kind, pattern in (("projector", _PROJECTOR), ("vision", _VISION), ("head", _HEAD),
                          ("embedding", _EMBEDDING), ("norm", _NORM)):
        if _matches(pattern, modules):
            return kind
    return "other"


def _common_prefix(names: list[str]) -> str:
    split = [n.split(".")[:-1] for n in names]  # never the whole name: keep the parameter
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "".join(f"{s}." for s in common)


def catalogue(model: ModelFiles) -> list[Component]:
    """The model's components: embedding, each block (with attention/mlp/norm/other
    children), final norm, head, vision tower, projector, other. Empty kinds are left out."""
    names = sorted(model.tensors, key=_natural)
    stacks: dict[str, dict[str, list[TensorInfo]]] = {}  # prefix -> layer segment -> tensors
    outside: dict[str, list[TensorInfo]] = {}
    for name in names:
        info = model.tensors[name]
        block = block_of(name)
        if block is None:
            outside.setdefault(_outside_kind(name), []).append(info)
        else:
            stacks.setdefault(block[0], {}).setdefault(block[1], []).append(info)

    blocks: dict[str, list[Component]] = {}
    for stack, layers in stacks.items():
        for segment, infos in layers.items():
            prefix = f"{stack}.{segment}." if stack else f"{segment}."
            cid = prefix[:-1]
            by_kind: dict[str, list[TensorInfo]] = {}
            for info in infos:
                by_kind.setdefault(_child_kind(info.name[len(prefix):]), []).append(info)
            children = [_component(f"{cid}.{kind}", kind, int(segment), by_kind[kind], prefix)
                        for kind in CHILD_KINDS if kind in by_kind]
            block = _component(cid, "block", int(segment), infos, prefix, children)
            blocks.setdefault(stack, []).append(block)

    def loose(kind: str) -> list[Component]:
        infos = outside.get(kind)
        if not infos:
            return []
        return [_component(OUTSIDE[kind], kind, None, infos, _common_prefix([t.name for t in infos]))]

    text = [c for stack, cs in blocks.items() if not _VISION.fullmatch(stack.lower()) for c in cs]
    vision = [c for stack, cs in blocks.items() if _VISION.fullmatch(stack.lower()) for c in cs]
    return (loose("embedding") + text + loose("norm") + loose("head") + loose("vision") + vision
            + loose("projector") + loose("other"))


def walk(components: Iterable[Component]) -> Iterator[Component]:
    """Every component, each followed by its children."""
    for component in components:
        yield component
        yield from walk(component.children)


# ------------------------------------------------------------------------------------- facts


def _config_value(config: dict | None, *keys: str) -> object:
    """The first of `keys` in config.json, or in its text_config (LLaVA-style nesting)."""
    for source in (config or {}, (config or {}).get("text_config") or {}):
        if isinstance(source, dict):
            for key in keys:
                if key in source:
                    return source[key]
    return None


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def stacks(components: list[Component]) -> list[dict]:
    """Each block stack: `{"prefix", "layers": [indices], "vision": bool}`, in catalogue order."""
    found: dict[str, list[int]] = {}
    for c in components:
        if c.kind == "block" and c.layer is not None:
            found.setdefault(c.id.rsplit(".", 1)[0] if "." in c.id else "", []).append(c.layer)
    return [{"prefix": prefix, "layers": sorted(layers), "vision": bool(_VISION.fullmatch(prefix.lower()))}
            for prefix, layers in found.items()]


def _main_stack(all_stacks: list[dict]) -> dict | None:
    text = [s for s in all_stacks if not s["vision"]] or all_stacks
    return max(text, key=lambda s: len(s["layers"])) if text else None


def _token_embedding(model: ModelFiles, components: list[Component]) -> TensorInfo | None:
    embed = next((c for c in components if c.kind == "embedding"), None)
    if embed is None:
        return None
    matrices = [model.tensors[n] for n in embed.tensors if len(model.tensors[n].shape) == 2]
    named = [t for t in matrices if _matches(_TOKEN_EMBEDDING, t.name.split(".")[-2:-1])]
    unnamed = [t for t in matrices if not re.search(r"position|pos_|token_type|wpe", t.name)]
    candidates = named or unnamed
    return max(candidates, key=lambda t: t.shape[0]) if candidates else None


def _lm_head(model: ModelFiles, components: list[Component]) -> TensorInfo | None:
    head = next((c for c in components if c.kind == "head"), None)
    if head is None:
        return None
    for name in head.tensors:
        info = model.tensors[name]
        if len(info.shape) == 2 and re.search(r"(^|\.)(lm_head|embed_out)\.", name):
            return info
    return None


def facts(model: ModelFiles, components: list[Component]) -> dict:
    """Header facts about the whole model. Keys are always present:
    `tensors, parameters, bytes, dtypes, layers, vocab, hidden_size, tied_embeddings,
    aliases, quantization, adapter, config_mismatches`."""
    infos = list(model.tensors.values())
    dtypes: Counter[str] = Counter()
    for t in infos:
        dtypes[t.dtype] += t.numel
    all_stacks = stacks(components)
    main = _main_stack(all_stacks)
    config = model.config
    embedding = _token_embedding(model, components)
    if embedding is not None and is_quantized(embedding.name, embedding):
        embedding = None  # packed rows say nothing about the vocabulary
    tokenizer_vocab = _int(model.tokenizer.get("vocab_size")) if model.tokenizer else None
    config_vocab = _int(_config_value(config, "vocab_size", "n_vocab", "padded_vocab_size"))
    rows = embedding.shape[0] if embedding else None
    real_vocab = tokenizer_vocab or (config_vocab if config_vocab != rows else None)
    layers_found = len(main["layers"]) if main else 0
    return {
        "tensors": len(infos),
        "parameters": sum(t.numel for t in infos),
        "bytes": sum(t.nbytes for t in infos),
        "dtypes": dict(sorted(dtypes.items())),
        "layers": {
            "found": layers_found,
            "config": _int(_config_value(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")),
            "missing": sorted(set(range(max(main["layers"]) + 1)) - set(main["layers"])) if main else [],
            "stacks": [{"prefix": s["prefix"], "layers": len(s["layers"]), "vision": s["vision"]}
                       for s in all_stacks],
        },
        "vocab": {
            "config": config_vocab,
            "tokenizer": tokenizer_vocab,
            "embedding_rows": rows,
            "embedding_tensor": embedding.name if embedding else None,
            "padded": bool(rows and real_vocab and rows > real_vocab),
            "padded_by": rows - real_vocab if rows and real_vocab and rows > real_vocab else 0,
        },
        "hidden_size": {
            "config": _int(_config_value(config, "hidden_size", "n_embd", "d_model", "dim")),
            "embedding": embedding.shape[1] if embedding else None,
        },
        "tied_embeddings": _tied(model, components, embedding),
        "aliases": _aliases(infos),
        "quantization": quantization(model),
        "adapter": adapter_facts(model),
        "config_mismatches": check_config(model, strict=False, components=components),
    }


def _tied(model: ModelFiles, components: list[Component], embedding: TensorInfo | None) -> dict:
    head = _lm_head(model, components)
    if head is not None:
        if embedding is not None and (head.file, head.start, head.end) == (embedding.file, embedding.start,
                                                                         embedding.end):
            return {"tied": True, "reason": f"{head.name} and {embedding.name} share their data"}
        return {"tied": False, "reason": f"{head.name} is its own tensor"}
    setting = _config_value(model.config, "tie_word_embeddings")
    architectures = " ".join(str(a) for a in (model.config or {}).get("architectures") or [])
    if setting is True or (setting is None and LM_ARCHITECTURES.search(architectures) and embedding):
        return {"tied": True, "reason": "no lm_head tensor; the config ties the head to the embedding"}
    if setting is False and LM_ARCHITECTURES.search(architectures):
        return {"tied": False, "reason": "no lm_head tensor, and tie_word_embeddings is false"}
    return {"tied": None, "reason": "no language-model head"}


def _aliases(infos: list[TensorInfo]) -> list[list[str]]:
    # Tensors naming the very same bytes (a tied head written by hand), grouped.
    by_place: dict[tuple[str, int, int], list[str]] = {}
    for t in infos:
        if t.nbytes:
            by_place.setdefault((t.file, t.start, t.end), []).append(t.name)
    return [sorted(names) for names in by_place.values() if len(names) > 1]




def adapter_facts(model: ModelFiles) -> dict | None:
    """PEFT adapter settings and what its tensors show: `{"peft_type", "r", "lora_alpha",
    "target_modules", "base_model", "task_type", "rank_found", "modules_found", "layers"}`."""
    cfg = model.adapter_config
    if cfg is None:
        return None
    modules: set[str] = set()
    ranks: set[int] = set()
    layers: set[str] = set()
    for name, info in model.tensors.items():
        match = lora_name(name)
        if not match or match.part == "lora_magnitude_vector":
            continue
        modules.add(match.module.rsplit(".", 1)[-1])
        block = block_of(name)
        if block:
            layers.add(f"{block[0]}.{block[1]}")
        if match.part == "lora_A" and len(info.shape) == 2:
            ranks.add(info.shape[0])
    targets = cfg.get("target_modules")
    return {
        "peft_type": cfg.get("peft_type"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "base_model": cfg.get("base_model_name_or_path"),
        "task_type": cfg.get("task_type"),
        "rank_found": sorted(ranks),
        "modules_found": sorted(modules),
        "layers": len(layers),
    }


def check_config(model: ModelFiles, strict: bool = True,
                 components: list[Component] | None = None) -> list[str]:
    """Where config.json (and the tokenizer) contradict the weights: a vocabulary larger than
    the embedding, a hidden size other than the embedding's width, a layer count other than
    the blocks present. Returns the problems; with `strict`, raises ConfigMismatchError."""
    if components is None:
        components = catalogue(model)
    problems: list[str] = []
    config = model.config
    where = model.root / "config.json"
    embedding = _token_embedding(model, components)
    if embedding is not None and is_quantized(embedding.name, embedding):
        embedding = None
    if config and embedding is not None and model.adapter_config is None:
        rows, width = embedding.shape
        vocab = _int(_config_value(config, "vocab_size"))
        if vocab is not None and vocab > rows:
            problems.append(f"{where}: vocab_size {vocab} is larger than tensor {embedding.name!r} "
                            f"({rows} rows)")
        hidden = _int(_config_value(config, "embedding_size", "word_embed_proj_dim")) or _int(
            _config_value(config, "hidden_size", "n_embd", "d_model"))
        if hidden is not None and hidden != width:
            problems.append(f"{where}: hidden_size {hidden} differs from tensor {embedding.name!r} "
                            f"width {width}")
    tokens = _int(model.tokenizer.get("vocab_size")) if model.tokenizer else None
    if embedding is not None and tokens is not None and tokens > embedding.shape[0]:
        problems.append(f"{model.root}: the tokenizer has {tokens} tokens, more than tensor "
                        f"{embedding.name!r} has rows ({embedding.shape[0]})")
    main = _main_stack(stacks(components))
    expected = _int(_config_value(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers"))
    if main and expected is not None and model.adapter_config is None:
        # DeepSeek-style multi-token-prediction layers sit after the configured ones.
        extra = _int(_config_value(config, "num_nextn_predict_layers")) or 0
        found = len(main["layers"])
        if found not in (expected, expected + extra):
            problems.append(f"{where}: num_hidden_layers {expected}, but {main['prefix']} has {found} "
                            f"layers ({layer_ranges(main['layers'])})")
    tied = _tied(model, components, embedding)
    if tied["tied"] is False and "tie_word_embeddings is false" in tied["reason"]:
        problems.append(f"{where}: no lm_head tensor, and tie_word_embeddings is false")
    if strict and problems:
        raise ConfigMismatchError("; ".join(problems))
    return problems


def layer_ranges(numbers: Iterable[int], empty: str = "none") -> str:
    """[0, 1, 2, 5] -> "0-2, 5": layer lists as people write them in messages."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or empty
