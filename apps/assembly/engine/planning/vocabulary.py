"""Tied embeddings, the output vocabulary and tokenizer, as planned from the models' headers
and tokenizer files: without a tokenizer setting the merged embeddings must agree in rows;
with one, the output's rows are the size of the tokenizer mergekit would build. (Building
that tokenizer and permuting the rows is the executor's, in engine/vocabulary.py.)"""

from __future__ import annotations

import json
from typing import Any

from ..recipe import ModelRef
from .context import PlanContext, config_value
from .errors import VocabMismatchError
from .inputs import LoadedModel


def output_tied(ctx: PlanContext) -> bool:
    """Whether the output ties its LM head to the embedding: the template's
    tie_word_embeddings, else whether it has no head of its own."""
    setting = config_value(ctx.template.files.config, "tie_word_embeddings")
    tied = setting if isinstance(setting, bool) else ctx.template.head is None
    if tied and ctx.template.head and ctx.template.facts["tied_embeddings"]["tied"] is not True:
        ctx.warnings.append(f"{ctx.template.key!r} sets tie_word_embeddings but has its own "
                            f"{ctx.template.head}; transformers ignores it, and so does the output")
    return tied


def plan_vocabulary(ctx: PlanContext) -> tuple[dict, dict]:
    """The output tokenizer (where it comes from, its size, the files copied) and the
    vocabulary report; sets the embeddings' rows to the output tokenizer's size when one is
    rebuilt, and refuses embeddings of different sizes when none is."""
    recipe = ctx.recipe
    source, tokens, pad = recipe.tokenizer_settings()
    per_model = {}
    for key, model in ctx.models.items():
        v = model.facts["vocab"]
        per_model[key] = {"embedding_rows": v["embedding_rows"], "tokenizer": v["tokenizer"],
                          "config": v["config"], "padded_by": v["padded_by"]}
        rows, tok, cfg = v["embedding_rows"], v["tokenizer"], v["config"]
        if rows and tok and tok > rows:
            ctx.warnings.append(f"{key!r}: its tokenizer has {tok} tokens, more than the {rows} "
                                "embedding rows")
        if rows and cfg and cfg != rows:
            ctx.warnings.append(f"{key!r}: config vocab_size {cfg} differs from the {rows} "
                                "embedding rows")
    embeds = [o for o in ctx.outputs if o.embedding]
    out_rows: int | None = None
    estimated = False
    if source is None:
        for out in embeds:
            rows = {s.model: s.shape[0] for s in out.sources if s.shape}
            if len(set(rows.values())) > 1:
                listed = ", ".join(f"{m!r} has {n}" for m, n in rows.items())
                raise VocabMismatchError(
                    f"{out.name}: the merged models differ in vocabulary size ({listed} rows); set "
                    "tokenizer_source (base, union or a model) so the embeddings are aligned to one "
                    "tokenizer")
        tok_sizes = {k: v["tokenizer"] for k, v in per_model.items()
                     if v["tokenizer"] and k in {s.model for o in embeds for s in o.sources}}
        if len(set(tok_sizes.values())) > 1:
            ctx.warnings.append("the merged models' tokenizers differ in size ("
                                + ", ".join(f"{k!r}: {n}" for k, n in tok_sizes.items())
                                + "); the same row may mean different tokens; consider tokenizer_source")
        tokenizer = {"source": None, "from": ctx.template.key, "rebuilt": False,
                     "files": list(ctx.template.files.tokenizer.get("files") or [])}
    else:
        out_rows, estimated, origin = _tokenizer_rows(ctx, source, tokens)
        if pad and out_rows % pad:
            out_rows = (out_rows // pad + 1) * pad
        for out in embeds:
            out.shape = (out_rows, *out.shape[1:])
            kind = source if isinstance(source, str) else "a model's"
            out.note = f"rows permuted to the output tokenizer ({kind})"
        tokenizer = {"source": str(source), "from": origin.key, "rebuilt": True,
                     "files": list(origin.files.tokenizer.get("files") or [])}

    embed_out = next((o for o in embeds if o.group == "pre"), None)
    head_out = next((o for o in embeds if o.group == "post"), None)
    if embed_out and head_out and embed_out.shape[0] != head_out.shape[0]:
        raise VocabMismatchError(
            f"the output's embedding {embed_out.name} ({embed_out.shape[0]} rows, from "
            f"{embed_out.sources[0].model!r}) and head {head_out.name} ({head_out.shape[0]} rows, from "
            f"{head_out.sources[0].model!r}) differ in vocabulary size; set tokenizer_source")
    either = embed_out or head_out
    rows = out_rows if out_rows is not None else either.shape[0] if either else None
    vocab_size = out_rows if out_rows is not None else ctx.template.facts["vocab"]["tokenizer"]
    tokenizer.update({"vocab_size": vocab_size, "embedding_rows": rows, "estimated": estimated,
                      "pad_to_multiple_of": pad, "added_tokens": sorted(tokens),
                      "chat_template": recipe.chat_template})
    vocab = {"models": per_model, "output_rows": rows, "tied": ctx.out_tied}
    return tokenizer, vocab


def _tokenizer_rows(ctx: PlanContext, source: Any, tokens: dict) -> tuple[int, bool, LoadedModel]:
    """Rows of the output embedding: the size of the output tokenizer's vocabulary, as
    mergekit builds it (base: the base's tokens below its vocab_size; union: every merged
    model's such tokens; a model: its tokenizer as is), plus the tokens added."""
    base = ctx.models[str(ctx.recipe.base_model)] if ctx.recipe.base_model else ctx.template
    if isinstance(source, ModelRef):
        origin = ctx.models[str(source)]
        groups = [(origin, False)]
    elif source == "base":
        origin, groups = base, [(base, True)]
    else:
        origin = base
        groups = [(m, True) for _, m in ctx.merged_models()]
    vocab: set[str] = set()
    estimated = False
    fallback = 0
    for model, stripped in groups:
        found = _token_set(model, stripped)
        if found is None:
            estimated = True
            fallback = max(fallback, model.facts["vocab"]["tokenizer"] or model.rows or 0)
        else:
            vocab |= found
    extra = [t for t in tokens if t not in vocab]
    return max(len(vocab), fallback) + len(extra), estimated, origin


def _token_set(model: LoadedModel, stripped: bool) -> set[str] | None:
    """The tokens of a model's tokenizer.json (vocabulary and added tokens); with `stripped`,
    only those with an id below the config's vocab_size, as mergekit strips them."""
    path = model.files.root / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    limit = model.facts["vocab"]["config"] if stripped else None
    vocab = (data.get("model") or {}).get("vocab") if isinstance(data, dict) else None
    tokens: set[str] = set()
    if isinstance(vocab, dict):
        tokens = {t for t, i in vocab.items() if limit is None or (type(i) is int and i < limit)}
    elif isinstance(vocab, list):
        tokens = {e[0] for i, e in enumerate(vocab)
                  if isinstance(e, list) and e and (limit is None or i < limit)}
    for added in data.get("added_tokens") or []:
        if not (isinstance(added, dict) and isinstance(added.get("content"), str)):
            continue
        if limit is None or (type(added.get("id")) is int and added["id"] < limit):
            tokens.add(added["content"])
    return tokens
