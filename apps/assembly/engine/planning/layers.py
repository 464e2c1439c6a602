"""Slices and layers: the recipe's `models:` or `slices:` as slices of layer ranges, and the
output tensors they make, slice by slice (before the blocks from the first slice, the blocks,
after them and the LM head from the last slice); every input tensor left out is dropped with
the reason. Then the shapes merged together are checked, and each output's dtype chosen."""

from __future__ import annotations

from dataclasses import dataclass

from apps.registry.engine.components import LM_ARCHITECTURES, layer_ranges

from ..recipe import DTYPES, InputSlice, ModelRef
from .context import PlanContext, natural
from .errors import (
    BaseModelRequiredError,
    LayerRangeError,
    ShapeMismatchError,
    SourceCountError,
    TiedEmbeddingError,
)
from .inputs import LoadedModel
from .result import OutputTensor, SourceTensor


@dataclass
class SliceSource:
    key: str
    ref: ModelRef
    start: int
    end: int
    role: str  # model | base


@dataclass
class PlanSlice:
    index: int
    sources: list[SliceSource]
    specs: list[InputSlice]  # for the precedence lookup (the model's own parameters)
    parameters: dict | None
    base: ModelRef | None
    where: str

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


def template_model(ctx: PlanContext) -> LoadedModel:
    """The model the output's names, config and tokenizer follow: the base, else the first
    slice's first model."""
    base_key = str(ctx.recipe.base_model) if ctx.recipe.base_model else None
    return ctx.models[base_key] if base_key else ctx.models[ctx.slices[0].sources[0].key]


def plan_tensors(ctx: PlanContext) -> None:
    """The output tensors, slice by slice: output layer i of a slice of n layers from layer
    `start + i` of each source at t = i / (n - 1) (t = 1 for one layer); the tensors outside
    the blocks at t = 0."""
    _plan_outside(ctx, ctx.slices[0], "pre", t=0.0)
    out_layer = 0
    for sl in ctx.slices:
        for offset in range(sl.length):
            t = offset / (sl.length - 1) if sl.length > 1 else 1.0
            _plan_layer(ctx, sl, offset, out_layer, t)
            out_layer += 1
    ctx.out_layers = out_layer
    _plan_outside(ctx, ctx.slices[-1], "post", t=0.0)
    _drop_unsliced_layers(ctx)


def make_slices(ctx: PlanContext) -> list[PlanSlice]:
    """`models:` as one slice of every model's full layer range (the base appended when it
    is not listed and the method takes one), or the recipe's `slices:`."""
    recipe = ctx.recipe
    slices: list[PlanSlice] = []
    if recipe.models:
        specs = [InputSlice(model=e.model, layer_range=(0, len(ctx.models[str(e.model)].layers)),
                            parameters=e.parameters) for e in recipe.models]
        base = recipe.base_model
        if base is not None and base not in [s.model for s in specs] and ctx.base_policy != "ignored":
            specs.append(InputSlice(model=base, layer_range=(0, len(ctx.models[str(base)].layers))))
        counts = {str(s.model): s.layer_range[1] for s in specs}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{k!r} has {n}" for k, n in counts.items())
            raise ShapeMismatchError(f"the models have different numbers of layers ({listed}); "
                                     "merge them with 'slices' instead of 'models'")
        slices.append(_make_slice(ctx, 0, specs, None, base, "models"))
    else:
        for i, out in enumerate(recipe.slices or []):
            base = out.base_model or recipe.base_model
            slices.append(_make_slice(ctx, i, list(out.sources), out.parameters, base, f"slices[{i}]"))
            if out.residual_weight is not None:
                ctx.warnings.append(f"slices[{i}]: residual_weight is in mergekit's schema but not used "
                                    "by its planner; ignored")
    return slices


def _make_slice(ctx: PlanContext, index: int, specs: list[InputSlice], parameters: dict | None,
                base: ModelRef | None, where: str) -> PlanSlice:
    sources = []
    for j, spec in enumerate(specs):
        model = ctx.models[str(spec.model)]
        start, end = spec.layer_range
        missing = [k for k in range(start, end) if k not in model.by_layer]
        if missing:
            raise LayerRangeError(
                f"{where}.sources[{j}]: layer_range [{start}, {end}] of {model.key!r} needs layers "
                f"{layer_ranges(missing)}, which it does not have (it has {len(model.layers)} layers: "
                f"{layer_ranges(model.layers)})")
        is_base = base is not None and spec.model == base and ctx.base_policy != "ignored"
        sources.append(SliceSource(model.key, spec.model, start, end, "base" if is_base else "model"))
    if sources and sources[0].end == sources[0].start:
        ctx.warnings.append(f"{where}: an empty layer range; the slice adds no layers")
    if ctx.base_policy == "required" and not any(s.role == "base" for s in sources):
        raise BaseModelRequiredError(f"{where}: merge method {ctx.method.name!r} needs the base model "
                                     f"{str(base)!r} among the sources")
    seen: set[str] = set()
    for source in sources:
        if source.key in seen:
            # mergekit keys a slice's inputs by model: the second entry would replace the first.
            raise SourceCountError(f"{where}: model {source.key!r} is listed more than once among the "
                                   "sources; a slice takes each model once")
        seen.add(source.key)
    count = sum(1 for s in sources if s.role == "model")
    low, high = ctx.method.min_models, ctx.method.max_models
    besides = " besides the base" if ctx.base_policy != "ignored" else ""
    names = ", ".join(repr(s.key) for s in sources if s.role == "model") or "none"
    if count < low or (high is not None and count > high):
        wanted = f"exactly {low}" if low == high else f"at least {low}" if count < low else f"at most {high}"
        raise SourceCountError(f"{where}: merge method {ctx.method.name!r} takes {wanted} "
                               f"model(s){besides}, got {count} ({names})")
    return PlanSlice(index, sources, specs, parameters, base, where)


def primary_source(sl: PlanSlice) -> SliceSource:
    # Output names follow the base where it takes part, else the first source (mergekit's
    # output config comes from the base model too).
    return next((s for s in sl.sources if s.role == "base"), sl.sources[0])


def _source_tensor(ctx: PlanContext, src: SliceSource, name: str, layer: int | None,
                   note: str | None = None) -> SourceTensor:
    info = ctx.models[src.key].info(name)
    return SourceTensor(model=src.key, tensor=name, shape=tuple(info.shape), dtype=info.dtype,
                        layer=layer, role=src.role, note=note)


def _plan_layer(ctx: PlanContext, sl: PlanSlice, offset: int, out_layer: int, t: float) -> None:
    primary = primary_source(sl)
    template_prefix = ctx.template.layer_prefix(out_layer)
    names = {s.key: ctx.models[s.key].by_layer[s.start + offset] for s in sl.sources}
    for src in sl.sources:
        model = ctx.models[src.key]
        if model.stack != ctx.template.stack:
            raise ShapeMismatchError(f"{sl.where}: {model.key!r} keeps its blocks under {model.stack!r}, "
                                     f"the output (like {ctx.template.key!r}) under "
                                     f"{ctx.template.stack!r}")
    lead = names[primary.key]
    for rel in sorted(lead, key=natural):
        sources = []
        for src in sl.sources:
            name = names[src.key].get(rel)
            if name is None:
                raise ShapeMismatchError(
                    f"{sl.where}: output layer {out_layer} needs {rel!r} from every source; "
                    f"{primary.key!r} layer {primary.start + offset} has {lead[rel]}, but {src.key!r} "
                    f"layer {src.start + offset} has no such tensor")
            sources.append(_source_tensor(ctx, src, name, src.start + offset))
        ctx.outputs.append(OutputTensor(name=template_prefix + rel, shape=sources[0].shape, dtype="",
                                        method=ctx.method.name, sources=sources, group="layer",
                                        layer=out_layer, slice=sl.index, t=t))
    for src in sl.sources:
        for rel, name in names[src.key].items():
            if rel not in lead:
                ctx.drop(src.key, name, f"not in the output: {primary.key!r} layer "
                                        f"{primary.start + offset} has no {rel!r}")
    ctx.layer_map.append({"output": out_layer, "slice": sl.index, "t": t,
                          "sources": [{"model": s.key, "layer": s.start + offset, "role": s.role}
                                      for s in sl.sources]})


def _plan_outside(ctx: PlanContext, sl: PlanSlice, group: str, t: float) -> None:
    primary = primary_source(sl)
    which = "first" if group == "pre" else "last"
    in_slice = {s.key for s in sl.sources}
    for key, model in ctx.merged_models():
        if key not in in_slice:
            for name in (model.pre if group == "pre" else model.post):
                what = "embedding" if group == "pre" else "tensors after the blocks"
                ctx.drop(key, name, f"{what} come from the {which} slice's models "
                                    f"({', '.join(sorted(in_slice))})")
    lead_model = ctx.models[primary.key]
    lead = [n for n in (lead_model.pre if group == "pre" else lead_model.post) if n != lead_model.head]
    for name in lead:
        sources = []
        for src in sl.sources:
            if name not in ctx.models[src.key].files.tensors:
                raise ShapeMismatchError(f"{sl.where}: tensor {name} is in {primary.key!r} but not in "
                                         f"{src.key!r}")
            sources.append(_source_tensor(ctx, src, name, None))
        embedding = name == lead_model.embedding
        ctx.outputs.append(OutputTensor(name=name, shape=sources[0].shape, dtype="",
                                        method=ctx.method.name, sources=sources, group=group,
                                        slice=sl.index, t=t, embedding=embedding))
    for src in sl.sources:
        model = ctx.models[src.key]
        for name in (model.pre if group == "pre" else model.post):
            if name not in lead and name != model.head:
                ctx.drop(src.key, name, f"not in the output: {primary.key!r} has no such tensor")
    if group == "post":
        _plan_head(ctx, sl, t)


def _plan_head(ctx: PlanContext, sl: PlanSlice, t: float) -> None:
    heads = {s.key: ctx.models[s.key].head for s in sl.sources}
    if ctx.out_tied:
        for key, head in heads.items():
            if head:
                ctx.drop(key, head, f"the output ties its head to the embedding "
                                    f"(tie_word_embeddings of {ctx.template.key!r}); the head is "
                                    "not written")
        return
    name = heads[primary_source(sl).key] or next((h for h in heads.values() if h), None)
    if name is None:
        arch = " ".join(str(a) for a in (ctx.template.files.config or {}).get("architectures") or [])
        if LM_ARCHITECTURES.search(arch):
            raise TiedEmbeddingError(
                f"the output's config (from {ctx.template.key!r}) has tie_word_embeddings false, but no "
                f"model of the {'last slice' if ctx.recipe.slices else 'merge'} has an LM head tensor")
        return
    sources = []
    for src in sl.sources:
        model = ctx.models[src.key]
        if model.head:
            sources.append(_source_tensor(ctx, src, model.head, None))
        elif model.embedding:
            sources.append(_source_tensor(ctx, src, model.embedding, None,
                                          note=f"tied: its embedding stands in for {name}"))
        else:
            raise TiedEmbeddingError(f"{src.key!r} has neither an LM head nor an embedding for {name}")
    ctx.outputs.append(OutputTensor(name=name, shape=sources[0].shape, dtype="", method=ctx.method.name,
                                    sources=sources, group="post", slice=sl.index, t=t, embedding=True))


def _drop_unsliced_layers(ctx: PlanContext) -> None:
    used: dict[str, set[int]] = {}
    for sl in ctx.slices:
        for src in sl.sources:
            used.setdefault(src.key, set()).update(range(src.start, src.end))
    base = str(ctx.recipe.base_model) if ctx.recipe.base_model else None
    for key, model in ctx.merged_models():
        if key not in used:
            if ctx.base_policy == "ignored":
                why = f"merge method {ctx.method.name!r} takes no base model"
            else:
                why = "the base model is not among the sources of any slice"
            for name in model.files.tensors:
                ctx.drop(key, name, why if key == base else "not among the sources of any slice")
            continue
        for layer, names in model.by_layer.items():
            if layer not in used[key]:
                for name in names.values():
                    ctx.drop(key, name, f"layer {layer} is outside every slice")


def check_shapes(ctx: PlanContext) -> None:
    """The tensors merged into one output tensor have the same shape (embeddings: the same width)."""
    for out in ctx.outputs:
        # Embedding rows may differ (the vocabulary check decided); their width may not.
        shapes = {s.shape[1:] if out.embedding else s.shape for s in out.sources}
        if len(shapes) > 1:
            where = f"layer {out.layer} " if out.layer is not None else ""
            listed = ", ".join(f"{s.model!r} {s.tensor} {list(s.shape)}" for s in out.sources)
            what = "the hidden sizes differ" if out.embedding else "the shapes differ"
            raise ShapeMismatchError(f"{where}tensor {out.name}: {what} ({listed})")


def assign_dtypes(ctx: PlanContext) -> None:
    """Each output tensor in out_dtype, else dtype, else its base (or first) source's dtype."""
    forced = ctx.recipe.out_dtype or ctx.recipe.dtype
    for out in ctx.outputs:
        if forced:
            out.dtype = DTYPES[forced]
        else:
            lead = next((s for s in out.sources if s.role == "base"), out.sources[0])
            out.dtype = lead.dtype

