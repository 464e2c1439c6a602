"""The plan of a merge, made from a recipe and the models' headers only (no tensor data, no
torch): which output tensor comes from which input tensors, with the method and the
parameters resolved for that tensor, and what happens to every input tensor not used.

The layout follows mergekit's planner:
- `models:` becomes one slice holding every model's full layer range (the base appended
  when it is not listed and the method takes a base);
- slice by slice, output layer i is built from layer `start + i` of each source, with
  t = i / (n - 1) over the slice's n layers (t = 1 for a one-layer slice) for gradients;
- tensors before the blocks (the embedding) come from the first slice's sources, every
  other tensor outside the main block stack (final norm, head, vision tower...) from the
  last slice's sources; both at t = 0, where mergekit 0.1.5 evaluates them (its planner
  reads them with the module's reader, whose t is 0), so a gradient gives them its first
  value whichever end of the stack they sit at;
- method-wide parameters are looked up with the output tensor's name, per-model ones with
  that model's input tensor name (what a `filter:` is matched against);
- output names, dtypes and config.json follow the base model where it takes part, else the
  first model; a tensor is written in out_dtype, else dtype, else that model's own dtype.

Where mergekit would fail late or silently do something else, the plan stops with a
PlanError instead: a method that ignores the base (linear, passthrough) does not get the
base appended (mergekit appends it, then crashes on its missing weight); a model listed twice
in one slice is refused (mergekit keys a slice's inputs by model and keeps one); embeddings of
different vocabulary sizes need a tokenizer setting (mergekit truncates them); a method-wide
parameter set for one model is refused (mergekit ignores it).

Every input tensor of every model that takes part ends up either as a source of some output
tensor or in `dropped` with the reason (a layer outside every slice, another slice's
embedding under passthrough, a head the output ties to its embedding, a component replaced
by a graft...). A tensor with neither is an error, never silently lost.

The estimate is deliberately simple and says what it assumes (`Estimate.assumptions`):
    disk    = output tensor bytes + tokenizer and config files copied
    read    = bytes of every source tensor read (once per use) + LoRA adapters
    memory  = max over output tensors of (its inputs at the compute dtype x the method's
              working-copy factor + the output tensor) + one write buffer
    time    = read / 500 MB/s + written / 500 MB/s + elements x inputs x the method's
              cost per element (a CPU figure; a GPU is faster)
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from apps.assembly.engine.methods.registry import METHOD_NAMES, get_method
from apps.assembly.engine.methods.spec import MethodParamError, MethodSpec, Param
from apps.registry.engine.components import (
    LM_ARCHITECTURES,
    catalogue,
    facts,
    layer_ranges,
    signature,
    stacks,
    walk,
)
from apps.registry.engine.header import HeaderError
from apps.registry.engine.lora_names import lora_pairs
from apps.registry.engine.model import read_model
from apps.registry.engine.types import DTYPE_BYTES, Component, ModelFiles, TensorInfo

from .recipe import DTYPES, InputSlice, ModelRef, Recipe, parameter, setting_scalars
from .validation import evaluation_need

Resolver = Callable[[str], Path]

READ_BYTES_PER_S = 500e6  # an ordinary SSD, streamed
WRITE_BYTES_PER_S = 500e6
WRITE_BUFFER_BYTES = 1 << 30  # the writer holds at most this much of a shard before flushing
# Validation: each model's loss on this many texts of up to VALIDATION_TOKENS tokens, one
# model at a time, at this many floating-point operations a second (a CPU figure).
VALIDATION_TEXTS = 16
VALIDATION_TOKENS = 256
VALIDATION_FLOPS = 50e9
# Working copies a method holds per input (deltas, masks, float32 upcasts), and its cost in
# nanoseconds per element per input on a CPU. Rough on purpose: they rank, they do not promise.
MEMORY_FACTOR = {"passthrough": 1.0, "graft": 1.0, "linear": 2.0, "slerp": 3.0, "nuslerp": 3.0,
                 "model_stock": 3.0, "task_arithmetic": 3.0, "ties": 3.5, "breadcrumbs": 3.5,
                 "breadcrumbs_ties": 3.5, "dare_linear": 4.0, "dare_ties": 4.0, "della": 4.5,
                 "della_linear": 4.5}
COST_NS = {"passthrough": 0.0, "graft": 0.0, "linear": 1.0, "slerp": 3.0, "nuslerp": 3.0,
           "model_stock": 3.0, "task_arithmetic": 2.0, "ties": 6.0, "breadcrumbs": 8.0,
           "breadcrumbs_ties": 9.0, "dare_linear": 5.0, "dare_ties": 7.0, "della": 12.0,
           "della_linear": 11.0}
# mergekit methods Audobon has no implementation of (yet): named in the unknown-method error.
MERGEKIT_ONLY = ("sce", "multislerp", "nearswap", "karcher", "arcee_fusion")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEAD_NAME = re.compile(r"(^|\.)(lm_head|embed_out)\.")


# ------------------------------------------------------------------------------------ errors


class PlanError(ValueError):
    """The recipe cannot be carried out on these models; the message says where and why."""


class ModelNotFoundError(PlanError):
    """The resolver does not know a model reference, or it points at nothing."""


class ModelReadError(PlanError):
    """A model's headers are broken, or it holds no safetensors weights."""


class AdapterError(PlanError):
    """A `model+lora` adapter is not a PEFT adapter, or does not fit its model."""


class UnknownMethodError(PlanError):
    pass


class ParameterError(PlanError):
    """Base of the parameter problems."""


class UnknownParameterError(ParameterError):
    pass


class MisplacedParameterError(ParameterError):
    """A method-wide parameter set for one model, where mergekit would ignore it."""


class MissingParameterError(ParameterError):
    pass


class ParameterValueError(ParameterError):
    """A value of the wrong kind (a weight that is not a number) or range (density outside (0, 1])."""


class BaseModelRequiredError(PlanError):
    pass


class SourceCountError(PlanError):
    """The method takes another number of models than the recipe gives it."""


class ShapeMismatchError(PlanError):
    """Models merged together do not have the same tensors, shapes or layer counts."""


class LayerRangeError(PlanError):
    """A slice's layer_range asks for layers its model does not have."""


class VocabMismatchError(PlanError):
    """Embeddings of different vocabulary sizes, with no tokenizer setting to reconcile them."""


class TiedEmbeddingError(PlanError):
    pass


class GraftError(PlanError):
    pass


class GraftSignatureError(GraftError):
    """The donor's component and the place it goes to differ in tensors or shapes."""


class UnsupportedRecipeError(PlanError):
    pass


class UnaccountedTensorError(PlanError):
    """An input tensor the plan neither uses nor drops with a reason (a planner bug)."""


# --------------------------------------------------------------------------------- the plan


@dataclass
class SourceTensor:
    model: str  # the reference as written in the recipe
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    layer: int | None = None  # the source layer, for block tensors
    role: str = "model"  # model | base | donor
    params: dict[str, Any] = field(default_factory=dict)  # per-model parameters, defaults filled in
    note: str | None = None

    def to_json(self) -> dict:
        return {"model": self.model, "tensor": self.tensor, "shape": list(self.shape), "dtype": self.dtype,
                "layer": self.layer, "role": self.role, "params": self.params, "note": self.note}


@dataclass
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    method: str
    sources: list[SourceTensor]
    params: dict[str, Any] = field(default_factory=dict)  # method-wide parameters, defaults filled in
    group: str = "layer"  # pre | layer | post (outside the blocks) | graft
    layer: int | None = None  # the output layer, for block tensors
    slice: int | None = None
    t: float = 0.0  # relative position in its slice, which gradients are evaluated at
    embedding: bool = False  # rows follow the vocabulary (token embedding, LM head)
    note: str | None = None

    @property
    def numel(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def nbytes(self) -> int:
        return _nbytes(self.numel, self.dtype)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.nbytes,
                "method": self.method, "params": self.params, "group": self.group, "layer": self.layer,
                "slice": self.slice, "t": self.t, "embedding": self.embedding, "note": self.note,
                "sources": [s.to_json() for s in self.sources]}


@dataclass
class DroppedTensor:
    model: str
    tensor: str
    reason: str


@dataclass
class ModelInput:
    """One model the recipe names, as the plan found it."""

    ref: str
    path: Path
    roles: list[str]  # base | source | donor | tokenizer
    tensors: int
    bytes: int
    layers: int
    stack: str | None
    vocab: dict
    tied: bool | None
    adapter: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ref": self.ref, "path": str(self.path), "roles": self.roles, "tensors": self.tensors,
                "bytes": self.bytes, "layers": self.layers, "stack": self.stack, "vocab": self.vocab,
                "tied": self.tied, "adapter": self.adapter, "warnings": self.warnings}


@dataclass
class Estimate:
    read_bytes: int
    output_bytes: int
    disk_bytes: int
    peak_memory_bytes: int
    seconds: float
    largest_tensor: str | None
    assumptions: dict[str, Any]
    # Validating the result against its parents afterwards, one model at a time, each in
    # its stored dtype: the largest single model's need, and the time for all of them.
    validation_peak_memory_bytes: int = 0
    validation_seconds: float = 0.0
    validation_models: dict[str, int] = field(default_factory=dict)  # label -> bytes to evaluate it

    def to_json(self) -> dict:
        return {"read_bytes": self.read_bytes, "output_bytes": self.output_bytes,
                "disk_bytes": self.disk_bytes, "peak_memory_bytes": self.peak_memory_bytes,
                "seconds": round(self.seconds, 3),
                "largest_tensor": self.largest_tensor, "assumptions": self.assumptions,
                "validation_peak_memory_bytes": self.validation_peak_memory_bytes,
                "validation_seconds": round(self.validation_seconds, 3),
                "validation_models": self.validation_models}


@dataclass
class Plan:
    recipe: Recipe
    method: str
    deterministic: bool
    base_model: str | None
    models: list[ModelInput]
    outputs: list[OutputTensor]
    dropped: list[DroppedTensor]
    layer_map: list[dict]
    config: dict
    tokenizer: dict
    vocab: dict
    grafts: list[dict]
    estimate: Estimate
    warnings: list[str]

    def output(self, name: str) -> OutputTensor:
        return next(o for o in self.outputs if o.name == name)

    def to_json(self) -> dict:
        """Plain JSON for the UI panel and `--dry-run --json`."""
        used = sum(len(o.sources) for o in self.outputs)
        inputs = sum(m.tensors for m in self.models if set(m.roles) - {"tokenizer"})
        return {
            "method": self.method,
            "deterministic": self.deterministic,
            "random_seed": self.recipe.random_seed,
            "base_model": self.base_model,
            "models": [m.to_json() for m in self.models],
            "layers": {"output": sum(1 for _ in self.layer_map), "map": self.layer_map},
            "outputs": [o.to_json() for o in self.outputs],
            "dropped": [{"model": d.model, "tensor": d.tensor, "reason": d.reason} for d in self.dropped],
            "accounting": {"input_tensors": inputs, "uses": used, "dropped": len(self.dropped),
                           "output_tensors": len(self.outputs)},
            "config": self.config,
            "tokenizer": self.tokenizer,
            "vocab": self.vocab,
            "grafts": self.grafts,
            "validation": self.recipe.validation.model_dump(mode="json") if self.recipe.validation else None,
            "estimate": self.estimate.to_json(),
            "warnings": self.warnings,
        }


# ------------------------------------------------------------------------------ the models


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _nbytes(numel: int, dtype: str) -> int:
    return int(-(-numel * DTYPE_BYTES.get(dtype, 4) // 1))


def _natural(name: str) -> tuple:
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in name.split("."))


def _config_value(config: dict | None, key: str) -> Any:
    for source in (config or {}, (config or {}).get("text_config") or {}):
        if isinstance(source, dict) and key in source:
            return source[key]
    return None


@dataclass
class _Model:
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


def _describe(files: ModelFiles, key: str, ref: ModelRef, path: Path) -> _Model:
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
    return _Model(key=key, ref=ref, path=path, files=files, components=components, facts=model_facts,
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


# ------------------------------------------------------------------------------- planning


@dataclass
class _Source:
    key: str
    ref: ModelRef
    start: int
    end: int
    role: str  # model | base


@dataclass
class _Slice:
    index: int
    sources: list[_Source]
    specs: list[InputSlice]  # for the precedence lookup (the model's own parameters)
    parameters: dict | None
    base: ModelRef | None
    where: str

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


def make_plan(recipe: Recipe, resolve: Resolver) -> Plan:
    """Plan `recipe`. `resolve` maps a model reference (`org/name@rev`, `asset:NAME@VERSION`, a
    path; for `model+lora`, each part on its own) to a model folder, raising LookupError for
    an unknown one. The merge method's parameter table and checks are the method registry's own
    (`get_method` imports no torch)."""
    return _Planner(recipe, resolve).plan()


class _Planner:
    def __init__(self, recipe: Recipe, resolve: Resolver):
        self.recipe = recipe
        self.resolve = resolve
        self.models: dict[str, _Model] = {}
        self.outputs: list[OutputTensor] = []
        self.drops: dict[tuple[str, str], str] = {}
        self.warnings: list[str] = []
        self.layer_map: list[dict] = []
        self.grafts: list[dict] = []

    # -- the steps ---------------------------------------------------------------------------

    def plan(self) -> Plan:
        recipe = self.recipe
        if recipe.modules:
            raise UnsupportedRecipeError(
                f"'modules' ({', '.join(recipe.modules)}) is not supported by the planner yet; "
                "write the recipe with 'models' or 'slices'")
        self.method = self._method(recipe.merge_method)
        self.params = {p.name: p for p in self.method.params}
        self._check_parameters()
        self.base_policy = self.method.base_policy
        self._check_base_given()
        for ref in recipe.referenced_models():
            self._load(ref)
        self._roles()
        self.slices = self._slices()
        base_key = str(recipe.base_model) if recipe.base_model else None
        self.template = self.models[base_key] if base_key else self.models[self.slices[0].sources[0].key]
        self.out_tied = self._out_tied()

        self._plan_outside(self.slices[0], "pre", t=0.0)
        out_layer = 0
        for sl in self.slices:
            for offset in range(sl.length):
                t = offset / (sl.length - 1) if sl.length > 1 else 1.0
                self._plan_layer(sl, offset, out_layer, t)
                out_layer += 1
        self.out_layers = out_layer
        self._plan_outside(self.slices[-1], "post", t=0.0)
        self._drop_unsliced_layers()

        self._check_shapes()
        tokenizer, vocab = self._vocabulary()
        for out in self.outputs:
            self._resolve_params(out)
        self._dtypes()
        config = self._config(vocab)
        self._apply_grafts(config)
        self._account()
        estimate = self._estimate(tokenizer, config)
        return Plan(
            recipe=recipe, method=self.method.name, deterministic=bool(self.method.deterministic),
            base_model=base_key, models=[self._model_input(m) for m in self.models.values()],
            outputs=self.outputs,
            dropped=[DroppedTensor(model, tensor, reason) for (model, tensor), reason in self.drops.items()
                     if (model, tensor) not in self._used],
            layer_map=self.layer_map, config=config, tokenizer=tokenizer, vocab=vocab, grafts=self.grafts,
            estimate=estimate, warnings=self.warnings,
        )

    def _method(self, name: str) -> MethodSpec:
        try:
            return cast(MethodSpec, get_method(name))  # every registered method is a MethodSpec
        except MethodParamError:
            pass
        known = sorted(METHOD_NAMES)
        if name in MERGEKIT_ONLY:
            raise UnknownMethodError(f"merge method {name!r} is a mergekit method Audobon does not "
                                     f"implement; known methods: {', '.join(known)}") from None
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownMethodError(f"unknown merge method {name!r}{hint}; known methods: "
                                 f"{', '.join(known)}") from None

    # -- parameters, before any model is read -------------------------------------------------

    def _levels(self) -> Iterable[tuple[str, dict | None, str]]:
        recipe = self.recipe
        yield "parameters", recipe.parameters, "global"
        for i, entry in enumerate(recipe.models or []):
            yield f"models[{i}] ({entry.model}) parameters", entry.parameters, "model"
        for i, out in enumerate(recipe.slices or []):
            yield f"slices[{i}] parameters", out.parameters, "slice"
            for j, source in enumerate(out.sources):
                yield f"slices[{i}].sources[{j}] ({source.model}) parameters", source.parameters, "model"

    def _known_params(self) -> str:
        wide = ", ".join(n for n, p in self.params.items() if not p.per_model) or "none"
        each = ", ".join(n for n, p in self.params.items() if p.per_model) or "none"
        return f"it takes method-wide: {wide}; per-model: {each}"

    def _check_parameters(self) -> None:
        method = self.method.name
        for where, params, level in self._levels():
            for name, setting in (params or {}).items():
                param = self.params.get(name)
                if param is None:
                    close = difflib.get_close_matches(name, list(self.params), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise UnknownParameterError(f"{where}: merge method {method!r} has no parameter "
                                                f"{name!r}{hint}; {self._known_params()}")
                if level == "model" and not param.per_model:
                    raise MisplacedParameterError(
                        f"{where}: {name!r} is a method-wide parameter of {method!r}; set for one model "
                        "it has no effect (mergekit ignores it): move it to the slice's or the top-level "
                        "parameters")
                for value in setting_scalars(setting):
                    self._value(param, value, where)

    def _value(self, param: Param, value: Any, where: str) -> Any:
        """`value` checked against the parameter; YAML 1.1 reads `1e-3` as a string, so a
        numeric string for a float parameter is taken as the number (with a warning)."""
        if param.kind == "float" and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                warning = (f"{where}: {param.name} {value!r} is a string in the YAML; read as the number "
                           f"{number:g} (mergekit would keep it a string)")
                if warning not in self.warnings:
                    self.warnings.append(warning)
                value = number
        problem = param.complaint(value)
        if problem is not None:
            raise ParameterValueError(f"{where}: {param.name} {problem}")
        return value

    def _check_base_given(self) -> None:
        if self.base_policy != "required" or self.recipe.base_model is not None:
            return
        if self.recipe.slices and all(s.base_model is not None for s in self.recipe.slices):
            return
        raise BaseModelRequiredError(f"merge method {self.method.name!r} needs a base_model, and the recipe "
                                     "has none")

    # -- models ------------------------------------------------------------------------------

    def _resolve_path(self, ref: str) -> Path:
        try:
            path = Path(self.resolve(ref))
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

    def _load(self, ref: ModelRef) -> _Model:
        key = str(ref)
        if key in self.models:
            return self.models[key]
        path = self._resolve_path(str(ref.model))
        try:
            files = read_model(path)
        except HeaderError as err:
            raise ModelReadError(f"model {key!r}: {err}") from None
        if not files.tensors:
            pickles = ", ".join(files.pickle_files)
            extra = f" (pickle files are not read: {pickles})" if pickles else ""
            raise ModelReadError(f"model {key!r} ({path}) has no safetensors weights{extra}")
        model = _describe(files, key, ref, path)
        if ref.lora is not None:
            self._load_adapter(model, ref)
        if ref.override_architecture:
            self.warnings.append(f"model {key!r}: override_architecture is not used by the planner")
        self.models[key] = model
        return model

    def _load_adapter(self, model: _Model, ref: ModelRef) -> None:
        lora = str(ref.lora)
        path = self._resolve_path(lora)
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

    def _roles(self) -> None:
        recipe = self.recipe
        if recipe.base_model:
            self.models[str(recipe.base_model)].roles.append("base")
        for entry in recipe.models or []:
            self._role(str(entry.model), "source")
        for out in recipe.slices or []:
            for source in out.sources:
                self._role(str(source.model), "source")
        for graft in recipe.graft:
            self._role(str(graft.from_), "donor")
        for ref in recipe.referenced_models():
            if not self.models[str(ref)].roles:
                self.models[str(ref)].roles.append("tokenizer")

    def _role(self, key: str, role: str) -> None:
        if role not in self.models[key].roles:
            self.models[key].roles.append(role)

    # -- slices ------------------------------------------------------------------------------

    def _slices(self) -> list[_Slice]:
        recipe = self.recipe
        slices: list[_Slice] = []
        if recipe.models:
            specs = [InputSlice(model=e.model, layer_range=(0, len(self.models[str(e.model)].layers)),
                                parameters=e.parameters) for e in recipe.models]
            base = recipe.base_model
            if base is not None and base not in [s.model for s in specs] and self.base_policy != "ignored":
                specs.append(InputSlice(model=base, layer_range=(0, len(self.models[str(base)].layers))))
            counts = {str(s.model): s.layer_range[1] for s in specs}
            if len(set(counts.values())) > 1:
                listed = ", ".join(f"{k!r} has {n}" for k, n in counts.items())
                raise ShapeMismatchError(f"the models have different numbers of layers ({listed}); "
                                         "merge them with 'slices' instead of 'models'")
            slices.append(self._slice(0, specs, None, base, "models"))
        else:
            for i, out in enumerate(recipe.slices or []):
                base = out.base_model or recipe.base_model
                slices.append(self._slice(i, list(out.sources), out.parameters, base, f"slices[{i}]"))
                if out.residual_weight is not None:
                    self.warnings.append(f"slices[{i}]: residual_weight is in mergekit's schema but not used "
                                         "by its planner; ignored")
        return slices

    def _slice(self, index: int, specs: list[InputSlice], parameters: dict | None, base: ModelRef | None,
               where: str) -> _Slice:
        sources = []
        for j, spec in enumerate(specs):
            model = self.models[str(spec.model)]
            start, end = spec.layer_range
            missing = [k for k in range(start, end) if k not in model.by_layer]
            if missing:
                raise LayerRangeError(
                    f"{where}.sources[{j}]: layer_range [{start}, {end}] of {model.key!r} needs layers "
                    f"{layer_ranges(missing)}, which it does not have (it has {len(model.layers)} layers: "
                    f"{layer_ranges(model.layers)})")
            is_base = base is not None and spec.model == base and self.base_policy != "ignored"
            sources.append(_Source(model.key, spec.model, start, end, "base" if is_base else "model"))
        if sources and sources[0].end == sources[0].start:
            self.warnings.append(f"{where}: an empty layer range; the slice adds no layers")
        if self.base_policy == "required" and not any(s.role == "base" for s in sources):
            raise BaseModelRequiredError(f"{where}: merge method {self.method.name!r} needs the base model "
                                         f"{str(base)!r} among the sources")
        seen: set[str] = set()
        for source in sources:
            if source.key in seen:
                # mergekit keys a slice's inputs by model: the second entry would replace the first.
                raise SourceCountError(f"{where}: model {source.key!r} is listed more than once among the "
                                       "sources; a slice takes each model once")
            seen.add(source.key)
        count = sum(1 for s in sources if s.role == "model")
        low, high = self.method.min_models, self.method.max_models
        besides = " besides the base" if self.base_policy != "ignored" else ""
        names = ", ".join(repr(s.key) for s in sources if s.role == "model") or "none"
        if count < low or (high is not None and count > high):
            if low == high:
                wanted = f"exactly {low}"
            else:
                wanted = f"at least {low}" if count < low else f"at most {high}"
            raise SourceCountError(f"{where}: merge method {self.method.name!r} takes {wanted} "
                                   f"model(s){besides}, got {count} ({names})")
        return _Slice(index, sources, specs, parameters, base, where)

    def _primary(self, sl: _Slice) -> _Source:
        # Output names follow the base where it takes part, else the first source (mergekit's
        # output config comes from the base model too).
        return next((s for s in sl.sources if s.role == "base"), sl.sources[0])

    # -- output tensors ----------------------------------------------------------------------

    def _source(self, src: _Source, name: str, layer: int | None, note: str | None = None) -> SourceTensor:
        info = self.models[src.key].info(name)
        return SourceTensor(model=src.key, tensor=name, shape=tuple(info.shape), dtype=info.dtype,
                            layer=layer, role=src.role, note=note)

    def _plan_layer(self, sl: _Slice, offset: int, out_layer: int, t: float) -> None:
        primary = self._primary(sl)
        template_prefix = self.template.layer_prefix(out_layer)
        names = {s.key: self.models[s.key].by_layer[s.start + offset] for s in sl.sources}
        for src in sl.sources:
            model = self.models[src.key]
            if model.stack != self.template.stack:
                raise ShapeMismatchError(f"{sl.where}: {model.key!r} keeps its blocks under {model.stack!r}, "
                                         f"the output (like {self.template.key!r}) under "
                                         f"{self.template.stack!r}")
        lead = names[primary.key]
        for rel in sorted(lead, key=_natural):
            sources = []
            for src in sl.sources:
                name = names[src.key].get(rel)
                if name is None:
                    raise ShapeMismatchError(
                        f"{sl.where}: output layer {out_layer} needs {rel!r} from every source; "
                        f"{primary.key!r} layer {primary.start + offset} has {lead[rel]}, but {src.key!r} "
                        f"layer {src.start + offset} has no such tensor")
                sources.append(self._source(src, name, src.start + offset))
            self.outputs.append(OutputTensor(name=template_prefix + rel, shape=sources[0].shape, dtype="",
                                             method=self.method.name, sources=sources, group="layer",
                                             layer=out_layer, slice=sl.index, t=t))
        for src in sl.sources:
            for rel, name in names[src.key].items():
                if rel not in lead:
                    self._drop(src.key, name, f"not in the output: {primary.key!r} layer "
                                              f"{primary.start + offset} has no {rel!r}")
        self.layer_map.append({"output": out_layer, "slice": sl.index, "t": t,
                               "sources": [{"model": s.key, "layer": s.start + offset, "role": s.role}
                                           for s in sl.sources]})

    def _plan_outside(self, sl: _Slice, group: str, t: float) -> None:
        primary = self._primary(sl)
        which = "first" if group == "pre" else "last"
        in_slice = {s.key for s in sl.sources}
        for key, model in self._merged_models():
            if key not in in_slice:
                for name in (model.pre if group == "pre" else model.post):
                    what = "embedding" if group == "pre" else "tensors after the blocks"
                    self._drop(key, name, f"{what} come from the {which} slice's models "
                                          f"({', '.join(sorted(in_slice))})")
        lead_model = self.models[primary.key]
        lead = [n for n in (lead_model.pre if group == "pre" else lead_model.post) if n != lead_model.head]
        for name in lead:
            sources = []
            for src in sl.sources:
                if name not in self.models[src.key].files.tensors:
                    raise ShapeMismatchError(f"{sl.where}: tensor {name} is in {primary.key!r} but not in "
                                             f"{src.key!r}")
                sources.append(self._source(src, name, None))
            embedding = name == lead_model.embedding
            self.outputs.append(OutputTensor(name=name, shape=sources[0].shape, dtype="",
                                             method=self.method.name, sources=sources, group=group,
                                             slice=sl.index, t=t, embedding=embedding))
        for src in sl.sources:
            model = self.models[src.key]
            for name in (model.pre if group == "pre" else model.post):
                if name not in lead and name != model.head:
                    self._drop(src.key, name, f"not in the output: {primary.key!r} has no such tensor")
        if group == "post":
            self._plan_head(sl, t)

    def _plan_head(self, sl: _Slice, t: float) -> None:
        heads = {s.key: self.models[s.key].head for s in sl.sources}
        if self.out_tied:
            for key, head in heads.items():
                if head:
                    self._drop(key, head, f"the output ties its head to the embedding "
                                          f"(tie_word_embeddings of {self.template.key!r}); the head is "
                                          "not written")
            return
        name = heads[self._primary(sl).key] or next((h for h in heads.values() if h), None)
        if name is None:
            arch = " ".join(str(a) for a in (self.template.files.config or {}).get("architectures") or [])
            if LM_ARCHITECTURES.search(arch):
                raise TiedEmbeddingError(
                    f"the output's config (from {self.template.key!r}) has tie_word_embeddings false, but no "
                    f"model of the {'last slice' if self.recipe.slices else 'merge'} has an LM head tensor")
            return
        sources = []
        for src in sl.sources:
            model = self.models[src.key]
            if model.head:
                sources.append(self._source(src, model.head, None))
            elif model.embedding:
                sources.append(self._source(src, model.embedding, None,
                                            note=f"tied: its embedding stands in for {name}"))
            else:
                raise TiedEmbeddingError(f"{src.key!r} has neither an LM head nor an embedding for {name}")
        self.outputs.append(OutputTensor(name=name, shape=sources[0].shape, dtype="", method=self.method.name,
                                         sources=sources, group="post", slice=sl.index, t=t, embedding=True))

    def _merged_models(self) -> list[tuple[str, _Model]]:
        return [(k, m) for k, m in self.models.items() if {"source", "base"} & set(m.roles)]

    def _drop_unsliced_layers(self) -> None:
        used: dict[str, set[int]] = {}
        for sl in self.slices:
            for src in sl.sources:
                used.setdefault(src.key, set()).update(range(src.start, src.end))
        base = str(self.recipe.base_model) if self.recipe.base_model else None
        for key, model in self._merged_models():
            if key not in used:
                if self.base_policy == "ignored":
                    why = f"merge method {self.method.name!r} takes no base model"
                else:
                    why = "the base model is not among the sources of any slice"
                for name in model.files.tensors:
                    self._drop(key, name, why if key == base else "not among the sources of any slice")
                continue
            for layer, names in model.by_layer.items():
                if layer not in used[key]:
                    for name in names.values():
                        self._drop(key, name, f"layer {layer} is outside every slice")

    def _drop(self, model: str, tensor: str, reason: str) -> None:
        self.drops.setdefault((model, tensor), reason)

    # -- tied embeddings, vocabulary, tokenizer ----------------------------------------------

    def _out_tied(self) -> bool:
        setting = _config_value(self.template.files.config, "tie_word_embeddings")
        tied = setting if isinstance(setting, bool) else self.template.head is None
        if tied and self.template.head and self.template.facts["tied_embeddings"]["tied"] is not True:
            self.warnings.append(f"{self.template.key!r} sets tie_word_embeddings but has its own "
                                 f"{self.template.head}; transformers ignores it, and so does the output")
        return tied

    def _vocabulary(self) -> tuple[dict, dict]:
        recipe = self.recipe
        source, tokens, pad = recipe.tokenizer_settings()
        per_model = {}
        for key, model in self.models.items():
            v = model.facts["vocab"]
            per_model[key] = {"embedding_rows": v["embedding_rows"], "tokenizer": v["tokenizer"],
                              "config": v["config"], "padded_by": v["padded_by"]}
            rows, tok, cfg = v["embedding_rows"], v["tokenizer"], v["config"]
            if rows and tok and tok > rows:
                self.warnings.append(f"{key!r}: its tokenizer has {tok} tokens, more than the {rows} "
                                     "embedding rows")
            if rows and cfg and cfg != rows:
                self.warnings.append(f"{key!r}: config vocab_size {cfg} differs from the {rows} "
                                     "embedding rows")
        embeds = [o for o in self.outputs if o.embedding]
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
                self.warnings.append("the merged models' tokenizers differ in size ("
                                     + ", ".join(f"{k!r}: {n}" for k, n in tok_sizes.items())
                                     + "); the same row may mean different tokens; consider tokenizer_source")
            tokenizer = {"source": None, "from": self.template.key, "rebuilt": False,
                         "files": list(self.template.files.tokenizer.get("files") or [])}
        else:
            out_rows, estimated, origin = self._tokenizer_rows(source, tokens)
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
        vocab_size = out_rows if out_rows is not None else self.template.facts["vocab"]["tokenizer"]
        tokenizer.update({"vocab_size": vocab_size, "embedding_rows": rows, "estimated": estimated,
                          "pad_to_multiple_of": pad, "added_tokens": sorted(tokens),
                          "chat_template": recipe.chat_template})
        vocab = {"models": per_model, "output_rows": rows, "tied": self.out_tied}
        return tokenizer, vocab

    def _tokenizer_rows(self, source: Any, tokens: dict) -> tuple[int, bool, _Model]:
        """Rows of the output embedding: the size of the output tokenizer's vocabulary, as
        mergekit builds it (base: the base's tokens below its vocab_size; union: every merged
        model's such tokens; a model: its tokenizer as is), plus the tokens added."""
        base = self.models[str(self.recipe.base_model)] if self.recipe.base_model else self.template
        if isinstance(source, ModelRef):
            origin = self.models[str(source)]
            groups = [(origin, False)]
        elif source == "base":
            origin, groups = base, [(base, True)]
        else:
            origin = base
            groups = [(m, True) for _, m in self._merged_models()]
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

    # -- shapes, parameters, dtypes ----------------------------------------------------------

    def _check_shapes(self) -> None:
        for out in self.outputs:
            # Embedding rows may differ (the vocabulary check decided); their width may not.
            shapes = {s.shape[1:] if out.embedding else s.shape for s in out.sources}
            if len(shapes) > 1:
                where = f"layer {out.layer} " if out.layer is not None else ""
                listed = ", ".join(f"{s.model!r} {s.tensor} {list(s.shape)}" for s in out.sources)
                what = "the hidden sizes differ" if out.embedding else "the shapes differ"
                raise ShapeMismatchError(f"{where}tensor {out.name}: {what} ({listed})")

    def _resolve_params(self, out: OutputTensor) -> None:
        sl = self.slices[out.slice or 0]
        method = self.method.name
        globals_: dict[str, Any] = {}
        for p in self.params.values():
            if p.per_model:
                continue
            value, _ = parameter(p.name, tensor_name=out.name, t=out.t, model=None, slice_sources=sl.specs,
                                 slice_parameters=sl.parameters, global_parameters=self.recipe.parameters)
            if value is None:
                if p.required:
                    raise MissingParameterError(f"merge method {method!r} needs parameter {p.name!r} (for "
                                                f"tensor {out.name}); set it in the top-level or the slice's "
                                                "parameters")
                continue
            globals_[p.name] = self._value(p, value, f"tensor {out.name}")
        per_model: list[dict[str, Any]] = []
        for src in out.sources:
            if src.role == "base":
                continue
            values: dict[str, Any] = {}
            # Per-model filters see the model's own tensor name (the head's for a tied embedding).
            name = out.name if src.note and src.note.startswith("tied") else src.tensor
            ref = next(s.ref for s in sl.sources if s.key == src.model)
            for p in self.params.values():
                if not p.per_model:
                    continue
                value, _ = parameter(p.name, tensor_name=name, t=out.t, model=ref, slice_sources=sl.specs,
                                     slice_parameters=sl.parameters, global_parameters=self.recipe.parameters)
                if value is None:
                    if p.required:
                        raise MissingParameterError(
                            f"merge method {method!r} needs parameter {p.name!r} for model {src.model!r} "
                            f"(tensor {src.tensor}); set it under the model's parameters, the slice's, or "
                            "the top level")
                    continue
                values[p.name] = self._value(p, value, f"model {src.model!r}, tensor {src.tensor}")
            per_model.append(values)
        resolved_global, resolved_models = self._validate(out, globals_, per_model)
        out.params = resolved_global
        for src, values in zip([s for s in out.sources if s.role != "base"], resolved_models, strict=True):
            src.params = values

    def _validate(self, out: OutputTensor, globals_: dict, per_model: list[dict]) -> tuple[dict, list[dict]]:
        try:
            return self.method.resolve(globals_, per_model)
        except MethodParamError as err:
            models = [s.model for s in out.sources if s.role != "base"]
            message = re.sub(r"model index (\d+)", lambda m: f"model {models[int(m[1])]!r}", str(err))
            raise ParameterValueError(f"tensor {out.name}: {message}") from None

    def _dtypes(self) -> None:
        forced = self.recipe.out_dtype or self.recipe.dtype
        for out in self.outputs:
            if forced:
                out.dtype = DTYPES[forced]
            else:
                lead = next((s for s in out.sources if s.role == "base"), out.sources[0])
                out.dtype = lead.dtype

    # -- output config -----------------------------------------------------------------------

    def _config(self, vocab: dict) -> dict:
        config = copy.deepcopy(self.template.files.config or {})
        target = config
        text = config.get("text_config")
        if isinstance(text, dict) and not any(k in config for k in LAYER_COUNT_KEYS):
            target = text
        key = next((k for k in LAYER_COUNT_KEYS if k in target), None)
        if key or self.template.stack is not None:
            old = target.get(key or "num_hidden_layers")
            target[key or "num_hidden_layers"] = self.out_layers
            per_layer = target.get("layer_types")
            if isinstance(per_layer, list) and len(per_layer) in (old, len(self.template.layers)):
                target["layer_types"] = self._layer_types()
        source, _, _ = self.recipe.tokenizer_settings()
        if source is not None and vocab["output_rows"] is not None:
            target["vocab_size"] = vocab["output_rows"]
        name = self.recipe.out_dtype or self.recipe.dtype
        if name:
            for dkey in ("torch_dtype", "dtype"):
                if dkey in config or dkey == "torch_dtype":
                    config[dkey] = name
        if "tie_word_embeddings" in target or self.out_tied is False:
            target["tie_word_embeddings"] = self.out_tied
        return config

    def _layer_types(self) -> list:
        types_: list = []
        for entry in self.layer_map:
            source = next((s for s in entry["sources"] if s["role"] == "base"), entry["sources"][0])
            cfg = self.models[source["model"]].files.config or {}
            values = _config_value(cfg, "layer_types")
            layer = source["layer"]
            types_.append(values[layer] if isinstance(values, list) and layer < len(values) else None)
        return types_

    # -- grafts ------------------------------------------------------------------------------

    def _apply_grafts(self, config: dict) -> None:
        if not self.recipe.graft:
            return
        by_name = {o.name: o for o in self.outputs}
        for i, graft in enumerate(self.recipe.graft):
            donor = self.models[str(graft.from_)]
            out_files = ModelFiles(root=Path("<output>"), config=config, shards=[], tensors={
                o.name: TensorInfo(o.name, o.dtype, o.shape, 0, o.nbytes, "<output>") for o in self.outputs})
            out_components = list(walk(catalogue(out_files)))
            donor_components = list(walk(donor.components))
            pairs: list[tuple[str, str]] = []
            if isinstance(graft.component, tuple):
                into = graft.into if isinstance(graft.into, tuple) else graft.component
                for k, k2 in zip(range(*graft.component), range(*into), strict=True):
                    pairs.append((donor.layer_prefix(k)[:-1], self.template.layer_prefix(k2)[:-1]))
            else:
                into_id = graft.into if isinstance(graft.into, str) else graft.component
                pairs.append((graft.component, into_id))
            for src_id, dst_id in pairs:
                src = _find(donor_components, src_id, f"graft[{i}]: model {donor.key!r}")
                dst = _find(out_components, dst_id, f"graft[{i}]: the output")
                self._graft_one(i, donor, src, dst, by_name)

    def _graft_one(self, index: int, donor: _Model, src: Component, dst: Component,
                   by_name: dict[str, OutputTensor]) -> None:
        dst_dtype = {n[len(dst.prefix):]: by_name[n].dtype for n in dst.tensors}
        donor_infos = []
        for n in src.tensors:
            info = donor.info(n)
            rel = n[len(src.prefix):]
            # The donor's dtype does not decide whether it fits; the writer casts.
            donor_infos.append(TensorInfo(n, dst_dtype.get(rel, info.dtype), info.shape, 0, 0, info.file))
        src_signature = signature(donor_infos, src.prefix)
        if src_signature != dst.signature:
            src_shapes = {n[len(src.prefix):]: list(donor.info(n).shape) for n in src.tensors}
            dst_shapes = {n[len(dst.prefix):]: list(by_name[n].shape) for n in dst.tensors}
            differences = [f"{rel}: {src_shapes.get(rel, 'absent')} vs {dst_shapes.get(rel, 'absent')}"
                           for rel in sorted(set(src_shapes) | set(dst_shapes), key=_natural)
                           if src_shapes.get(rel) != dst_shapes.get(rel)]
            raise GraftSignatureError(
                f"graft[{index}]: component {src.id!r} of {donor.key!r} (signature {src_signature}) does "
                f"not fit {dst.id!r} of the output (signature {dst.signature}): {'; '.join(differences[:4])}")
        forced = self.recipe.out_dtype or self.recipe.dtype
        for name in dst.tensors:
            out = by_name[name]
            donor_name = src.prefix + name[len(dst.prefix):]
            for old in out.sources:
                self._drop(old.model, old.tensor, f"replaced by graft[{index}] ({src.id} from {donor.key!r})")
            info = donor.info(donor_name)
            out.sources = [SourceTensor(model=donor.key, tensor=donor_name, shape=tuple(info.shape),
                                        dtype=info.dtype, layer=src.layer, role="donor")]
            out.method, out.params, out.group = "graft", {}, "graft"
            out.dtype = DTYPES[forced] if forced else info.dtype
            out.note = f"graft[{index}]: {src.id} of {donor.key!r}"
        for name in donor.files.tensors:
            self._drop(donor.key, name, f"only the grafted component(s) are taken from {donor.key!r}")
        self.grafts.append({"index": index, "from": donor.key, "component": src.id, "into": dst.id,
                            "signature": dst.signature, "tensors": len(dst.tensors)})

    # -- accounting and estimate -------------------------------------------------------------

    def _account(self) -> None:
        self._used = {(s.model, s.tensor) for o in self.outputs for s in o.sources}
        missing = []
        for key, model in self.models.items():
            if not {"source", "base", "donor"} & set(model.roles):
                continue
            for name in model.files.tensors:
                if (key, name) not in self._used and (key, name) not in self.drops:
                    missing.append(f"{key!r} {name}")
        if missing:
            raise UnaccountedTensorError(f"{len(missing)} input tensor(s) are neither used nor dropped "
                                         f"with a reason: {', '.join(missing[:5])}")

    def _estimate(self, tokenizer: dict, config: dict) -> Estimate:
        read = 0
        peak = 0
        largest = None
        cost = 0.0
        compute = DTYPES.get(self.recipe.dtype or "", None)
        for out in self.outputs:
            method = out.method
            inputs = 0
            for s in out.sources:
                numel = 1
                for n in s.shape:
                    numel *= n
                read += _nbytes(numel, s.dtype)
                inputs += _nbytes(numel, compute or s.dtype)
                cost += numel * COST_NS.get(method, 5.0) * 1e-9
            need = int(inputs * MEMORY_FACTOR.get(method, 3.0)) + out.nbytes
            if need > peak:
                peak, largest = need, out.name
        read += sum(m.adapter_bytes for m in self.models.values())
        output_bytes = sum(o.nbytes for o in self.outputs)
        origin = self.models.get(tokenizer.get("from") or "", self.template)
        side_files = [origin.files.root / n for n in tokenizer.get("files") or []]
        side = sum(p.stat().st_size for p in side_files if p.is_file())
        side += len(json.dumps(self.template.files.config or {}))
        write = min(output_bytes, WRITE_BUFFER_BYTES)
        seconds = read / READ_BYTES_PER_S + output_bytes / WRITE_BYTES_PER_S + cost
        texts = (self.recipe.validation and self.recipe.validation.max_samples) or VALIDATION_TEXTS
        numel_out = sum(_numel(o.shape) for o in self.outputs)
        checked = {"result": (output_bytes, numel_out, config)}
        for m in self.models.values():
            if set(m.roles) & {"source", "base"}:
                checked[m.key] = (sum(t.nbytes for t in m.files.tensors.values()),
                                  sum(_numel(t.shape) for t in m.files.tensors.values()), m.files.config)
        needs = {label: evaluation_need(b, cfg, max_tokens=VALIDATION_TOKENS)
                 for label, (b, _, cfg) in checked.items()}
        validation_seconds = sum(b / READ_BYTES_PER_S + 2 * n * texts * VALIDATION_TOKENS / VALIDATION_FLOPS
                                 for b, n, _ in checked.values())
        return Estimate(
            read_bytes=read, output_bytes=output_bytes, disk_bytes=output_bytes + side,
            peak_memory_bytes=peak + write, seconds=seconds, largest_tensor=largest,
            assumptions={"read_bytes_per_s": READ_BYTES_PER_S, "write_bytes_per_s": WRITE_BYTES_PER_S,
                         "write_buffer_bytes": WRITE_BUFFER_BYTES,
                         "memory_factor": MEMORY_FACTOR.get(self.method.name, 3.0),
                         "cost_ns_per_element": COST_NS.get(self.method.name, 5.0),
                         "compute_dtype": self.recipe.dtype or "the inputs' own",
                         "validation_texts": texts, "validation_tokens": VALIDATION_TOKENS,
                         "validation_flops": VALIDATION_FLOPS},
            validation_peak_memory_bytes=max(needs.values()), validation_seconds=validation_seconds,
            validation_models=needs,
        )

    def _model_input(self, model: _Model) -> ModelInput:
        return ModelInput(
            ref=model.key, path=model.path, roles=model.roles, tensors=len(model.files.tensors),
            bytes=sum(t.nbytes for t in model.files.tensors.values()), layers=len(model.layers),
            stack=model.stack, vocab=model.facts["vocab"], tied=model.facts["tied_embeddings"]["tied"],
            adapter=model.adapter,
            warnings=list(model.files.warnings) + list(model.facts["config_mismatches"]))


def _find(components: list[Component], cid: str, where: str) -> Component:
    exact = [c for c in components if c.id == cid]
    if exact:
        return exact[0]
    suffix = [c for c in components if c.id.endswith("." + cid)]
    if len(suffix) == 1:
        return suffix[0]
    close = difflib.get_close_matches(cid, [c.id for c in components], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise GraftError(f"{where} has no component {cid!r}{hint}")


def _token_set(model: _Model, stripped: bool) -> set[str] | None:
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
