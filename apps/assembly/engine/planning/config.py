"""The output's config.json: the template model's, with the output's layer count (and
per-layer types), vocabulary size, dtype and embedding tying."""

from __future__ import annotations

import copy

from .context import PlanContext, config_value

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def output_config(ctx: PlanContext, vocab: dict) -> dict:
    """The template model's config.json with the output's layer count, vocab_size, dtype
    and tie_word_embeddings."""
    config = copy.deepcopy(ctx.template.files.config or {})
    target = config
    text = config.get("text_config")
    if isinstance(text, dict) and not any(k in config for k in LAYER_COUNT_KEYS):
        target = text
    key = next((k for k in LAYER_COUNT_KEYS if k in target), None)
    if key or ctx.template.stack is not None:
        old = target.get(key or "num_hidden_layers")
        target[key or "num_hidden_layers"] = ctx.out_layers
        per_layer = target.get("layer_types")
        if isinstance(per_layer, list) and len(per_layer) in (old, len(ctx.template.layers)):
            target["layer_types"] = _layer_types(ctx)
    source, _, _ = ctx.recipe.tokenizer_settings()
    if source is not None and vocab["output_rows"] is not None:
        target["vocab_size"] = vocab["output_rows"]
    name = ctx.recipe.out_dtype or ctx.recipe.dtype
    if name:
        for dkey in ("torch_dtype", "dtype"):
            if dkey in config or dkey == "torch_dtype":
                config[dkey] = name
    if "tie_word_embeddings" in target or ctx.out_tied is False:
        target["tie_word_embeddings"] = ctx.out_tied
    return config


def _layer_types(ctx: PlanContext) -> list:
    types_: list = []
    for entry in ctx.layer_map:
        source = next((s for s in entry["sources"] if s["role"] == "base"), entry["sources"][0])
        cfg = ctx.models[source["model"]].files.config or {}
        values = config_value(cfg, "layer_types")
        layer = source["layer"]
        types_.append(values[layer] if isinstance(values, list) and layer < len(values) else None)
    return types_
