"""The models a recipe names, read from their headers only (no tensor data), with their
`model+lora` adapters checked against them, and the roles each model plays."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from apps.registry.engine.components import catalogue, facts, stacks
from apps.registry.engine.header import HeaderError
from apps.registry.engine.lora_names import lora_pairs
from apps.registry.engine.model import read_model
from apps.registry.engine.types import Component, ModelFiles, TensorInfo

from ..recipe import ModelRef
from .context import PlanContext
from .errors import AdapterError, ModelNotFoundError, ModelReadError
from .result import ModelInput

_HEAD_NAME = re.compile(r"(^|\.)(lm_head|embed_out)\.")


@dataclass
class LoadedModel:
    """One model as the planner sees it: its files, components and where its tensors sit."""

    key: str
    ref: ModelRef
    path: Path
    files: ModelFiles
    components: list[Component]
    facts: dict
    stack: str | None
    layers: list[int]
    pre: list[str]  # tensors before the blocks (the embedding component)
    post: list[str]  # every other tensor outside the main stack
    by_layer: dict[int, dict[str, str]]  # layer -> relative name -> tensor name
    embedding: str | None
    head: str | None
    adapter: dict | None = None
    adapter_bytes: int = 0
    roles: list[str] = field(default_factory=list)

    def layer_prefix(self, layer: int) -> str:
        return f"{self.stack}.{layer}." if self.stack else f"{layer}."

    @property
    def rows(self) -> int | None:
        return self.files.tensors[self.embedding].shape[0] if self.embedding else None

    def info(self, name: str) -> TensorInfo:
        return self.files.tensors[name]


def _main_stack(components: list[Component]) -> dict | None:
    found = stacks(components)
    text = [s for s in found if not s["vision"]] or found
    return max(text, key=lambda s: len(s["layers"])) if text else None


def describe(files: ModelFiles, key: str, ref: ModelRef, path: Path) -> LoadedModel:
    components = catalogue(files)
    model_facts = facts(files, components)
    main = _main_stack(components)
    stack = main["prefix"] if main else None
    block_ids = {f"{stack}.{k}" if stack else str(k): k for k in (main["layers"] if main else [])}
    by_layer: dict[int, dict[str, str]] = {}
    pre: list[str] = []
    post: list[str] = []
    for component in components:
        if component.kind == "block" and component.id in block_ids:
            layer = block_ids[component.id]
            by_layer[layer] = {name[len(component.prefix):]: name for name in component.tensors}
        elif component.kind == "embedding":
            pre.extend(component.tensors)
        else:
            post.extend(component.tensors)
    embedding = model_facts["vocab"]["embedding_tensor"]
    return LoadedModel(key=key, ref=ref, path=path, files=files, components=components, facts=model_facts,
                       stack=stack, layers=sorted(by_layer), pre=pre, post=post, by_layer=by_layer,
                       embedding=embedding, head=_head(files, components, embedding))


def _head(files: ModelFiles, components: list[Component], embedding: str | None) -> str | None:
    head = next((c for c in components if c.kind == "head"), None)
    if head is None:
        return None
    matrices = [n for n in head.tensors if len(files.tensors[n].shape) == 2]
    named = [n for n in matrices if _HEAD_NAME.search(n)]
    if named:
        return named[0]
    rows = files.tensors[embedding].shape[0] if embedding else None
    return next((n for n in matrices if files.tensors[n].shape[0] == rows), None)


def load_models(ctx: PlanContext) -> None:
    """Read every model the recipe references (in its order), then give each its roles."""
    for ref in ctx.recipe.referenced_models():
        load_model(ctx, ref)
    assign_roles(ctx)


def _resolve_path(ctx: PlanContext, ref: str) -> Path:
    try:
        path = Path(ctx.resolve(ref))
    except LookupError as err:
        detail = str(err).strip("'\" ")
        if detail.startswith(f"model {ref!r}"):  # the resolver already said it in full
            raise ModelNotFoundError(detail) from None
        extra = f" ({detail})" if detail and detail != ref else ""
        raise ModelNotFoundError(f"model {ref!r} is not in the registry{extra}") from None
    except FileNotFoundError as err:
        raise ModelNotFoundError(f"model {ref!r} was not found: {err}") from None
    if not path.exists():
        raise ModelNotFoundError(f"model {ref!r} resolves to {path}, which does not exist")
    return path


def load_model(ctx: PlanContext, ref: ModelRef) -> LoadedModel:
    key = str(ref)
    if key in ctx.models:
        return ctx.models[key]
    path = _resolve_path(ctx, str(ref.model))
    try:
        files = read_model(path)
    except HeaderError as err:
        raise ModelReadError(f"model {key!r}: {err}") from None
    if not files.tensors:
        pickles = ", ".join(files.pickle_files)
        extra = f" (pickle files are not read: {pickles})" if pickles else ""
        raise ModelReadError(f"model {key!r} ({path}) has no safetensors weights{extra}")
    model = describe(files, key, ref, path)
    if ref.lora is not None:
        _load_adapter(ctx, model, ref)
    if ref.override_architecture:
        ctx.warnings.append(f"model {key!r}: override_architecture is not used by the planner")
    ctx.models[key] = model
    return model


def _load_adapter(ctx: PlanContext, model: LoadedModel, ref: ModelRef) -> None:
    lora = str(ref.lora)
    path = _resolve_path(ctx, lora)
    try:
        adapter = read_model(path)
    except HeaderError as err:
        raise AdapterError(f"adapter {lora!r} of {model.key!r}: {err}") from None
    if adapter.adapter_config is None:
        raise AdapterError(f"adapter {lora!r} of {model.key!r} is not a PEFT adapter "
                           "(no adapter_config.json)")
    pairs = {module: {part: adapter.tensors[name] for part, name in parts.items()}
             for module, parts in lora_pairs(adapter.tensors).items()}
    for module, parts in sorted(pairs.items()):
        target = f"{module}.weight"
        if target not in model.files.tensors:
            raise AdapterError(f"adapter {lora!r} changes {target}, which model {str(ref.model)!r} "
                               "does not have")
        shape = model.info(target).shape
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is None or b is None or len(shape) != 2:
            continue
        if (b.shape[0], a.shape[1]) != tuple(shape) or a.shape[0] != b.shape[1]:
            raise AdapterError(f"adapter {lora!r} does not fit {target} of {str(ref.model)!r}: lora_A "
                               f"{list(a.shape)} x lora_B {list(b.shape)} against {list(shape)}")
    cfg = adapter.adapter_config
    model.adapter = {"ref": lora, "path": str(path), "r": cfg.get("r"),
                     "lora_alpha": cfg.get("lora_alpha"), "modules": len(pairs),
                     "bytes": sum(t.nbytes for t in adapter.tensors.values()),
                     "note": "merged into the model before it is merged"}
    model.adapter_bytes = model.adapter["bytes"]


def assign_roles(ctx: PlanContext) -> None:
    recipe = ctx.recipe
    if recipe.base_model:
        ctx.models[str(recipe.base_model)].roles.append("base")
    for entry in recipe.models or []:
        _add_role(ctx, str(entry.model), "source")
    for out in recipe.slices or []:
        for source in out.sources:
            _add_role(ctx, str(source.model), "source")
    for graft in recipe.graft:
        _add_role(ctx, str(graft.from_), "donor")
    for ref in recipe.referenced_models():
        if not ctx.models[str(ref)].roles:
            ctx.models[str(ref)].roles.append("tokenizer")


def _add_role(ctx: PlanContext, key: str, role: str) -> None:
    if role not in ctx.models[key].roles:
        ctx.models[key].roles.append(role)


def model_input(model: LoadedModel) -> ModelInput:
    """The model as the plan reports it."""
    return ModelInput(
        ref=model.key, path=model.path, roles=model.roles, tensors=len(model.files.tensors),
        bytes=sum(t.nbytes for t in model.files.tensors.values()), layers=len(model.layers),
        stack=model.stack, vocab=model.facts["vocab"], tied=model.facts["tied_embeddings"]["tied"],
        adapter=model.adapter,
        warnings=list(model.files.warnings) + list(model.facts["config_mismatches"]))
