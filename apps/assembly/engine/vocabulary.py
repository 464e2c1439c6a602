"""A merged model's vocabulary when its models' tokenizers differ (`tokenizer_source` / `tokenizer:`),
built as mergekit 0.1.5 builds it, and each model's token-indexed rows (embeddings, LM head)
re-ordered to it before they are merged.

The output tokenizer is the base's (tokens at or past its config's vocab_size stripped), a named
model's, or the union: the base's tokens, then every other model's tokens the base lacks, then
the added tokens. The base is the recipe's base_model, else its first model (mergekit takes an
arbitrary one then), and new tokens come in id order (mergekit's order changes from run to run):
so a token's embedding is mergekit's, while the ids of tokens new to the base may differ.

A model's row for an output token is its own row for that token. A token a model lacks gets, in
that model: the embedding named in `tokenizer.tokens` for it; else the only model's that has it;
else the base_model's; else the mean over the models that have it; zeros where none does. Rows
past the vocabulary (`pad_to_multiple_of`) get the mean of the real ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .plan import Plan

logger = logging.getLogger(__name__)


class VocabularyError(RuntimeError):
    pass


@dataclass
class OutputVocabulary:
    tokenizer: Any  # a transformers tokenizer, saved with the model
    vocab: dict[str, int]
    rows: int  # len(vocab), padded up to pad_to_multiple_of
    permutations: dict[str, dict[int, int]]  # model -> output token id -> its own row (-1: lacks it)
    original_vocabs: dict[str, dict[str, int]]
    merge_base: str | None  # the recipe's base_model: its row wins for a token several models lack
    tokens: dict[str, Any] = field(default_factory=dict)  # recipe's token settings (TokenEmbedding)

    def save(self, folder: Path) -> list[str]:
        return list(self.tokenizer.save_pretrained(str(folder)))


def _config_vocab_size(path: Path) -> int | None:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("vocab_size")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("vocab_size")
    return value if isinstance(value, int) else None


def _load(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), use_fast=True)


def _stripped(path: Path):
    """The model's tokenizer without the tokens at or past its config's vocab_size."""
    import tokenizers

    tok = _load(path)
    size = _config_vocab_size(path) or len(tok.get_vocab())
    unused = [t for t, i in tok.get_vocab().items() if i >= size]
    if not unused:
        return tok
    if not tok.is_fast:
        raise VocabularyError(f"{path}: its tokenizer has tokens past vocab_size {size} and no fast "
                              "version to strip them from")
    data = json.loads(tok._tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise VocabularyError(f"{path}: a {data['model']['type']} tokenizer with tokens past vocab_size "
                              f"{size}; only BPE ones can be stripped")
    unused_set = set(unused)
    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    for t in unused:
        data["model"]["vocab"].pop(t, None)

    def keep(merge) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(p in unused_set for p in parts)

    data["model"]["merges"] = [m for m in data["model"]["merges"] if keep(m)]
    tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    return tok


def _union(base_tok, toks: dict[str, Any], paths: dict[str, Path]):
    import tempfile

    from transformers import AutoTokenizer

    out_vocab: dict[str, int] = {}
    out_added: dict[str, Any] = {}
    for key, tok in toks.items():
        size = _config_vocab_size(paths[key]) or tok.vocab_size
        added = tok.added_tokens_decoder
        added_contents = {info.content for info in added.values()}
        # In id order: the same union on every run (mergekit walks a hash map's order, which
        # changes from process to process).
        for t, i in sorted(tok.get_vocab().items(), key=lambda item: item[1]):
            if i >= size or t in added_contents:
                continue
            out_vocab.setdefault(t, len(out_vocab))
        for i, info in added.items():
            if i < size:
                out_added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's own tokenizer stays as it is
        base_tok.save_pretrained(tmp, legacy_format=False)
        result = AutoTokenizer.from_pretrained(tmp, use_fast=True)
    base_vocab = base_tok.get_vocab()
    for t in out_vocab:
        if t not in out_added and t not in base_vocab:
            result.add_tokens(t)
    for info in out_added.values():
        result.add_tokens(info)
    return result


def build_vocabulary(plan: Plan) -> OutputVocabulary:
    """The output tokenizer and each model's row permutation for a plan whose tokenizer is rebuilt."""
    from .recipe import ModelRef

    recipe = plan.recipe
    source, tokens, pad = recipe.tokenizer_settings()
    paths = {m.ref: Path(m.path) for m in plan.models}
    order = [m.ref for m in plan.models]
    base = str(recipe.base_model) if recipe.base_model is not None else order[0]
    toks: dict[str, Any] = {base: _stripped(paths[base])}
    for key in order:
        if key == base:
            continue
        try:
            toks[key] = _load(paths[key])
        except (OSError, ValueError) as exc:
            logger.warning("no tokenizer for %s (%s): taken to be the base's", key, exc)
    if isinstance(source, ModelRef):
        key = str(source)
        if key not in paths:
            raise VocabularyError(f"tokenizer_source {key!r} is not one of the recipe's models")
        out_tok = _load(paths[key])
    elif source == "base":
        out_tok = toks[base]
    elif source == "union":
        out_tok = _union(toks[base], toks, paths)
    else:
        raise VocabularyError(f"unknown tokenizer_source {source!r}")
    existing = set(out_tok.get_vocab())
    for t in tokens:
        if t not in existing:
            out_tok.add_tokens(t)
            existing.add(t)
    vocab = out_tok.get_vocab()
    permutations: dict[str, dict[int, int]] = {}
    for key in order:
        own = (toks.get(key) or toks[base]).get_vocab()
        size = _config_vocab_size(paths[key]) or len(own)
        permutations[key] = {i: (own[t] if t in own and own[t] < size else -1) for t, i in vocab.items()}
    rows = len(vocab)
    if pad and rows % pad:
        rows = (rows // pad + 1) * pad
    return OutputVocabulary(tokenizer=out_tok, vocab=vocab, rows=rows, permutations=permutations,
                            original_vocabs={k: t.get_vocab() for k, t in toks.items()},
                            merge_base=str(recipe.base_model) if recipe.base_model is not None else None,
                            tokens=tokens)


def permute(vocabulary: OutputVocabulary, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each model's token-indexed tensor (rows = tokens) re-ordered to the output vocabulary."""
    import torch

    from .recipe import ModelRef, ModelTokenSource, ZeroSource

    if not tensors:
        return {}
    models = list(tensors)
    first = tensors[models[0]]
    dtype = first.dtype
    for t in tensors.values():
        dtype = torch.promote_types(dtype, t.dtype)
    device, shape = first.device, first.shape[1:]
    vocab, perms = vocabulary.vocab, vocabulary.permutations
    configs: dict[str, Any] = dict(vocabulary.tokens)

    # Where each token a model lacks takes its embedding from (mergekit's assign_embedding_sources).
    averaged: set[str] = set()
    for token, tid in vocab.items():
        if token in configs:
            continue
        present = [m for m in models if perms[m][tid] >= 0]
        if len(present) == 1:
            configs[token] = ("model", present[0])
        elif not present:
            configs[token] = ("zero", None)
            logger.warning("token %r is in none of the models", token)
        elif vocabulary.merge_base in models and perms[vocabulary.merge_base][tid] >= 0:
            configs[token] = ("model", vocabulary.merge_base)
        else:
            averaged.add(token)

    forced = {t for t, cfg in configs.items() if getattr(cfg, "force", False)}

    def from_config(token: str, tid: int, cfg) -> torch.Tensor:
        src = cfg.source if not isinstance(cfg, tuple) else cfg
        if isinstance(src, tuple):
            kind, model = src
            if kind == "zero":
                return first.new_zeros(shape)
            return tensors[model][perms[model][tid]]
        if isinstance(src, ZeroSource):
            return first.new_zeros(shape)
        if isinstance(src, ModelTokenSource):
            model = str(src.model)
            if model not in tensors:
                raise VocabularyError(f"token {token!r} takes its embedding from {model!r}, which has no "
                                      "such tensor here")
            row = src.token_id
            if row is None:
                if src.token not in vocabulary.original_vocabs.get(model, {}):
                    raise VocabularyError(f"token {src.token!r} is not in {model!r}'s tokenizer")
                row = vocabulary.original_vocabs[model][src.token]
            if not 0 <= row < tensors[model].shape[0]:
                raise VocabularyError(f"token id {row} is out of range for {model!r}")
            return tensors[model][row]
        if isinstance(src, ModelRef):
            model = str(src)
            if model not in tensors:
                raise VocabularyError(f"token {token!r} takes its embedding from {model!r}, which has no "
                                      "such tensor here")
            if perms[model][tid] < 0:
                raise VocabularyError(f"token {token!r} is not in {model!r}")
            return tensors[model][perms[model][tid]]
        raise VocabularyError(f"token {token!r}: no embedding source given")

    defaults: dict[str, torch.Tensor] = {}
    for token, tid in vocab.items():
        cfg = configs.get(token)
        if token not in forced and all(perms[m][tid] >= 0 for m in models):
            continue
        if token in averaged:
            embed = torch.zeros(shape, dtype=dtype, device=device)
            count = 0
            for m in models:
                if perms[m][tid] >= 0:
                    embed = embed + tensors[m][perms[m][tid]]
                    count += 1
            embed /= count
        elif cfg is not None:
            embed = from_config(token, tid, cfg)
        else:
            continue
        defaults[token] = embed

    out: dict[str, torch.Tensor] = {}
    ids = torch.tensor(list(vocab.values()), dtype=torch.long)
    for m in models:
        rows = torch.tensor([perms[m][tid] for tid in vocab.values()], dtype=torch.long)
        keep = rows >= 0
        if forced:
            keep &= torch.tensor([t not in forced for t in vocab], dtype=torch.bool)
        new = torch.zeros((vocabulary.rows, *shape), dtype=dtype, device=device)
        new[ids[keep].to(device)] = tensors[m][rows[keep].to(device)].to(dtype)
        for token, tid in vocab.items():
            if perms[m][tid] >= 0 and token not in forced:
                continue
            if token in defaults:
                new[tid] = defaults[token]
            else:
                logger.error("no embedding for token %r in model %s", token, m)
        if vocabulary.rows > len(vocab):
            new[len(vocab):] = torch.mean(new[: len(vocab)], dim=0)
        out[m] = new
    return out
