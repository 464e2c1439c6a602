"""Recipes: a mergekit YAML (the 0.1.5 schema, taken unchanged) plus Audobon's `graft:` and
`validation:` blocks, parsed into pydantic specs.

What the schema accepts, key by key (mergekit's names and meanings):

    merge_method        a method name (checked against the method registry by the planner)
    base_model          a model reference
    models              [{model, parameters}]                 } exactly one of these three
    slices              [{sources: [{model, layer_range: [a, b], parameters}],
                          base_model, residual_weight, parameters}]
    modules             {name: {models | slices, parameters}} }
    parameters          {name: setting} (global)
    dtype, out_dtype    bfloat16 | float16 | float32 | int64 (optionally "torch."-prefixed)
    tokenizer_source    base | union | a model reference      } not both
    tokenizer           {source, tokens: {token: {source, force}}, pad_to_multiple_of}
    chat_template       a template name or a Jinja string
    random_seed         Audobon: the seed for random methods (mergekit's --random-seed option)
    graft               Audobon: [{component, from, into}]
    validation          Audobon: {dataset, max_samples, gates: [{metric, max|min}], samples}

A parameter setting is a scalar, a gradient (a list of numbers interpolated over the layers;
a list of other scalars is stepped), or a list of `{filter, value}` conditionals where the
first entry whose filter is a substring of the tensor name wins and an entry without a
filter (or with "*") matches everything. `evaluate_setting` reproduces mergekit's
`evaluate_setting` exactly; `parameter` reproduces `ConfigReader.parameter`'s precedence:
the source's (model's) own parameters, then the slice's, then the global ones.

A model reference is `path`, `org/name`, `org/name@revision`, `asset:NAME@VERSION`, or any of
these as `model+lora` (mergekit's LoRA syntax); the mapping form `{model, lora,
override_architecture}` is accepted too. Unknown keys anywhere are an error that names the
key and where it is.
"""

from __future__ import annotations

import difflib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)

from apps.assets.engine.safeparse import ParseError, yaml_load

# Names mergekit's `dtype_from_name` accepts, and the safetensors dtype each one writes.
DTYPES: dict[str, str] = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "int64": "I64"}
# `org/name` as the Hugging Face hub spells a repository; only a hint, the resolver decides.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What a recipe may hold: far above any real one (mergekit's largest examples are a few KB).
MAX_RECIPE_BYTES = 64 * 1024
MAX_RECIPE_DEPTH = 64
MAX_RECIPE_NODES = 10_000
# Layer indices past this are refused: the planner walks ranges layer by layer, and the
# deepest real models have a few hundred.
MAX_LAYERS = 10_000


class RecipeError(ValueError):
    """The YAML is not a recipe; `problems` lists each defect with where it is."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        text = problems[0] if len(problems) == 1 else "the recipe has {} problems:\n- {}".format(
            len(problems), "\n- ".join(problems))
        super().__init__(text)


class Spec(BaseModel):
    # Unknown keys are refused everywhere: a typo must not silently change a merge.
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- model refs


class ModelPath(Spec):
    """A path, hub id or asset name, with an optional `@revision` (for assets, the version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.count("@") > 1:
            raise ValueError(f"model path {value!r} has more than one '@'")
        if "@" in text:
            path, revision = text.split("@")
            if not path or not revision:
                raise ValueError(f"model path {value!r} needs text on both sides of '@'")
            return {"path": path, "revision": revision}
        return {"path": text}

    @model_serializer(mode="plain")
    def _to_string(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"{self.path}@{self.revision}" if self.revision else self.path

    @property
    def kind(self) -> Literal["asset", "hub", "path"]:
        if self.path.startswith("asset:"):
            return "asset"
        if HUB_ID.fullmatch(self.path):
            return "hub"
        return "path"


class ModelRef(Spec):
    """A model, optionally with a LoRA adapter merged into it first (`model+lora`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelPath
    lora: ModelPath | None = None
    override_architecture: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            if not isinstance(value, dict | ModelRef):
                raise ValueError(f"a model reference is a string (a path, org/name[@revision] or "
                                 f"asset:NAME@VERSION, optionally +lora) or a mapping; got {value!r}")
            return value
        chunks = value.split("+")
        if len(chunks) == 1:
            return {"model": value}
        if len(chunks) == 2:
            return {"model": chunks[0], "lora": chunks[1]}
        raise ValueError(f"model reference {value!r} has more than one '+' (the form is model+lora)")

    @model_serializer(mode="plain")
    def _to_plain(self) -> str | dict:
        if self.override_architecture is None:
            return str(self)
        return {"model": str(self.model), "lora": str(self.lora) if self.lora else None,
                "override_architecture": self.override_architecture}

    def __str__(self) -> str:
        return f"{self.model}+{self.lora}" if self.lora else str(self.model)


# ----------------------------------------------------------------------------- parameters

Scalar = bool | int | float | str


def _is_scalar(value: object) -> bool:
    return isinstance(value, bool | int | float | str)


def _is_number(value: object) -> bool:
    # mergekit's gradient test is isinstance(e, (int, float)), which a bool passes too.
    return isinstance(value, int | float)


class Conditional(Spec):
    """One entry of a filtered setting: `value` applies where `filter` is in the tensor name."""

    filter: str | None = None
    value: Any  # a scalar or a gradient, checked by _setting

    @model_validator(mode="after")
    def _value(self) -> Conditional:
        self.value = _plain_setting(self.value, "value")
        return self


def _plain_setting(value: Any, what: str) -> Any:
    """A scalar or a non-empty list of scalars (a gradient)."""
    if _is_scalar(value):
        return _in_float_range(value, what)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{what} is an empty list; a gradient needs at least one value")
        if all(_is_scalar(e) for e in value):
            for e in value:
                _in_float_range(e, what)
            return value
    raise ValueError(f"{what} must be a number, a string, or a list of them (a gradient); got {value!r}")


def _in_float_range(value: Any, what: str) -> Any:
    # Settings are used as floats; an integer past float's range would end in OverflowError.
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _FLOAT_MAX:
        raise ValueError(f"{what} is an integer of {len(str(abs(value)))} digits, too large for a number")
    return value


_FLOAT_MAX = int(sys.float_info.max)


def _setting(value: Any) -> Any:
    """Canonical form of a parameter setting: a scalar, a list of scalars, or a list of
    Conditional. A lone `{filter, value}` mapping becomes a list of one."""
    if isinstance(value, Conditional) or (isinstance(value, list) and value
                                          and all(isinstance(e, Conditional) for e in value)):
        return value if isinstance(value, list) else [value]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(e, dict) for e in value):
        entries = []
        for i, entry in enumerate(value):
            unknown = sorted(set(entry) - {"filter", "value"})
            if unknown:
                raise ValueError(f"entry {i}: unknown key {unknown[0]!r} (a conditional takes 'filter' "
                                 "and 'value')")
            if "value" not in entry:
                raise ValueError(f"entry {i}: 'value' is required")
            if entry.get("filter") is not None and not isinstance(entry["filter"], str):
                raise ValueError(f"entry {i}: filter must be a string, got {entry['filter']!r}")
            entries.append(Conditional(filter=entry.get("filter"),
                                       value=_plain_setting(entry["value"], f"entry {i}: value")))
        return entries
    if isinstance(value, list) and any(isinstance(e, dict) for e in value):
        raise ValueError("a setting list mixes {filter, value} entries with plain values")
    return _plain_setting(value, "a parameter")


ParameterSetting = Annotated[Any, BeforeValidator(_setting)]
Parameters = dict[str, ParameterSetting]


def evaluate_setting(tensor_name: str | None, setting: Any, t: float = 0.0) -> Any:
    """The value of a setting for one tensor at relative layer position `t` (0..1), as
    mergekit's `evaluate_setting` computes it; None when no conditional matches."""
    if _is_scalar(setting):
        return setting
    if isinstance(setting, list):
        if all(_is_number(e) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        if all(_is_scalar(e) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate_setting(tensor_name, cond.value, t)
        return None
    raise TypeError(f"not a parameter setting: {setting!r}")


def setting_scalars(setting: Any) -> Iterator[Any]:
    """Every scalar a setting can evaluate to (gradient entries, conditional values)."""
    if _is_scalar(setting):
        yield setting
    elif isinstance(setting, list):
        for entry in setting:
            if isinstance(entry, Conditional):
                yield from setting_scalars(entry.value)
            else:
                yield entry


# ------------------------------------------------------------------------------- the specs


def _dtype(value: str) -> str:
    name = value.removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype {value!r} is not one of {', '.join(DTYPES)}")
    return name


DtypeName = Annotated[str, AfterValidator(_dtype)]


class InputModel(Spec):
    """An entry of `models:`."""

    model: ModelRef
    parameters: Parameters | None = None


class InputSlice(Spec):
    """A source of a slice: layers [a, b) of a model."""

    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _range(self) -> InputSlice:
        start, end = self.layer_range
        if start < 0 or end < start:
            raise ValueError(f"layer_range [{start}, {end}] of {self.model} must have 0 <= start <= end")
        if end > MAX_LAYERS:
            raise ValueError(f"layer_range [{start}, {end}] of {self.model} goes past layer {MAX_LAYERS}; "
                             "no model has that many")
        return self

    @property
    def length(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


class OutputSlice(Spec):
    """An entry of `slices:`: output layers built from the same number of layers of each source."""

    sources: list[InputSlice] = Field(min_length=1)
    base_model: ModelRef | None = None
    residual_weight: float | None = None  # in mergekit's schema; its planner does not use it
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _same_length(self) -> OutputSlice:
        lengths = {s.length for s in self.sources}
        if len(lengths) > 1:
            spans = ", ".join(f"{s.model} {list(s.layer_range)} has {s.length}" for s in self.sources)
            raise ValueError(f"all sources of a slice must cover the same number of layers: {spans}")
        return self


class OutputModule(Spec):
    """An entry of `modules:` (multi-module architectures): its own models or slices."""

    slices: list[OutputSlice] | None = None
    models: list[InputModel] | None = None
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _one_input(self) -> OutputModule:
        if bool(self.slices) == bool(self.models):
            raise ValueError("a module needs exactly one of 'slices' or 'models'")
        return self


class ModelTokenSource(Spec):
    """A new token's embedding copied from a token of some model."""

    kind: Literal["model_token"]
    model: ModelRef
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> ModelTokenSource:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id or token")
        return self


class ZeroSource(Spec):
    kind: Literal["zero"]


def _token_source_kind(value: Any) -> str:
    # Dispatch on `kind` so an error names the one shape meant, not every union branch.
    if isinstance(value, dict):
        return str(value.get("kind", "model-ref"))
    return {ModelTokenSource: "model_token", ZeroSource: "zero"}.get(type(value), "model-ref")


TokenSource = Annotated[
    Annotated[ModelTokenSource, Tag("model_token")] | Annotated[ZeroSource, Tag("zero")]
    | Annotated[ModelRef, Tag("model-ref")],
    Discriminator(_token_source_kind, custom_error_type="token_source",
                  custom_error_message="kind must be 'model_token' or 'zero' (or give a model reference)"),
]


class TokenEmbedding(Spec):
    source: TokenSource | None = None
    force: bool = False


class TokenizerSpec(Spec):
    """mergekit's `tokenizer:` block."""

    source: Literal["union", "base"] | ModelRef = "union"
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: PositiveInt | None = None


LayerSpan = tuple[int, int]


class GraftSpec(Spec):
    """Audobon: after the merge, copy a component of `from` over the output's component
    `into` (default: the same id). A component is a catalogue id ("model.layers.3.mlp",
    "head", "embed", "final_norm") or a block range [a, b) of the main stack."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    component: str | LayerSpan
    from_: ModelRef = Field(alias="from")
    into: str | LayerSpan | None = None

    @model_validator(mode="after")
    def _shapes(self) -> GraftSpec:
        for span in (self.component, self.into):
            if isinstance(span, tuple) and not 0 <= span[0] < span[1]:
                raise ValueError(f"layer range {list(span)} must have 0 <= start < end")
            if isinstance(span, tuple) and span[1] > MAX_LAYERS:
                raise ValueError(f"layer range {list(span)} goes past layer {MAX_LAYERS}; "
                                 "no model has that many")
        if self.into is not None and isinstance(self.into, tuple) != isinstance(self.component, tuple):
            raise ValueError("'into' must be a layer range when 'component' is one, and an id otherwise")
        if isinstance(self.into, tuple) and isinstance(self.component, tuple) \
                and self.into[1] - self.into[0] != self.component[1] - self.component[0]:
            raise ValueError(f"'into' {list(self.into)} must span as many layers as 'component' "
                             f"{list(self.component)}")
        return self


class ValidationGate(Spec):
    metric: str = Field(min_length=1)
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _bound(self) -> ValidationGate:
        if self.max is None and self.min is None:
            raise ValueError(f"gate on {self.metric!r} needs 'max' or 'min'")
        return self


class ValidationSpec(Spec):
    """Audobon: how to check the result (a dataset sample, gates on metrics, prompts to show)."""

    enabled: bool = True  # false: no validation, recorded on the version
    dataset: str | None = None
    max_samples: PositiveInt | None = None
    gates: list[ValidationGate] = Field(default_factory=list)
    samples: list[str] = Field(default_factory=list)


class Recipe(Spec):
    """A merge recipe: mergekit's `MergeConfiguration` plus Audobon's additions."""

    merge_method: str = Field(min_length=1)
    base_model: ModelRef | None = None
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    modules: dict[str, OutputModule] | None = None
    parameters: Parameters | None = None
    dtype: DtypeName | None = None
    out_dtype: DtypeName | None = None
    tokenizer_source: Literal["union", "base"] | ModelRef | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    random_seed: int | None = None
    graft: list[GraftSpec] = Field(default_factory=list)
    validation: ValidationSpec | None = None

    @model_validator(mode="after")
    def _inputs(self) -> Recipe:
        given = [key for key in ("models", "slices", "modules") if getattr(self, key)]
        if len(given) != 1:
            have = f" (it has {' and '.join(given)})" if given else ""
            raise ValueError(f"a recipe needs exactly one of 'models', 'slices' or 'modules'{have}")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give 'tokenizer_source' or a 'tokenizer' block, not both")
        return self

    def tokenizer_settings(self) -> tuple[str | ModelRef | None, dict[str, TokenEmbedding], int | None]:
        """(source, tokens to add, pad_to_multiple_of), whichever of the two forms was used."""
        if self.tokenizer is not None:
            return self.tokenizer.source, dict(self.tokenizer.tokens or {}), self.tokenizer.pad_to_multiple_of
        return self.tokenizer_source, {}, None

    def referenced_models(self) -> list[ModelRef]:
        """Every model the recipe names, in order of first mention, each once."""
        refs: list[ModelRef] = []

        def add(ref: ModelRef | None) -> None:
            if ref is not None and ref not in refs:
                refs.append(ref)

        add(self.base_model)
        groups: list[tuple[list[InputModel] | None, list[OutputSlice] | None]] = [(self.models, self.slices)]
        groups += [(m.models, m.slices) for m in (self.modules or {}).values()]
        for models, slices in groups:
            for entry in models or []:
                add(entry.model)
            for out in slices or []:
                add(out.base_model)
                for source in out.sources:
                    add(source.model)
        for graft in self.graft:
            add(graft.from_)
        source, tokens, _ = self.tokenizer_settings()
        if isinstance(source, ModelRef):
            add(source)
        for token in tokens.values():
            if isinstance(token.source, ModelRef):
                add(token.source)
            elif isinstance(token.source, ModelTokenSource):
                add(token.source.model)
        return refs

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        data["merge_method"] = self.merge_method
        return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True)


class _RecipeDumper(yaml.SafeDumper):
    """Lists of plain values in flow style (`layer_range: [0, 24]`), as mergekit writes them."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = bool(data) and all(isinstance(e, bool | int | float) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecipeDumper.add_representer(list, _represent_list)


def parameter(name: str, *, tensor_name: str | None, t: float, model: ModelRef | None,
              slice_sources: list[InputSlice] | None, slice_parameters: dict | None,
              global_parameters: dict | None) -> tuple[Any, str | None]:
    """(value, where it came from) of a parameter for one tensor, by mergekit's precedence:
    the model's own setting in the slice's sources, the slice's, then the global one. A level
    whose setting evaluates to None (no filter matched) passes to the next. `where` is
    "model", "slice", "global", or None when no level set it."""
    if model is not None:
        for source in slice_sources or []:
            if source.model == model and source.parameters and name in source.parameters:
                value = evaluate_setting(tensor_name, source.parameters[name], t)
                if value is not None:
                    return value, "model"
    for level, params in (("slice", slice_parameters), ("global", global_parameters)):
        if params and name in params:
            value = evaluate_setting(tensor_name, params[name], t)
            if value is not None:
                return value, level
    return None, None


# ---------------------------------------------------------------------------------- parsing


def parse_recipe(text: str | bytes, *, source: str = "recipe") -> Recipe:
    """A recipe from YAML text; RecipeError on any defect. The YAML is read within budgets
    (64 KB, 64 levels, 10,000 values with aliases expanded) before pydantic walks it: a few
    hundred bytes of nested aliases would otherwise stand for billions of values."""
    try:
        data = yaml_load(text, source=source, max_bytes=MAX_RECIPE_BYTES, max_depth=MAX_RECIPE_DEPTH,
                         max_nodes=MAX_RECIPE_NODES)
    except ParseError as err:
        raise RecipeError([str(err)]) from None
    return recipe_from_data(data)


def load_recipe(path: Path | str) -> Recipe:
    return parse_recipe(Path(path).read_text(encoding="utf-8"), source=str(path))


def recipe_from_data(data: Any) -> Recipe:
    """A recipe from already-parsed YAML/JSON data."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise RecipeError([f"a recipe is a mapping of keys (merge_method, models, ...); this one is {kind}"])
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_problems(err)) from None


def _where(loc: tuple) -> str:
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text


def _clean_loc(loc: tuple) -> tuple:
    # Union branches show up in `loc` as tags ("ModelRef", "literal['union','base']"): drop them.
    names = {cls.__name__ for cls in _SPECS} | {"model_token", "zero", "model-ref"}
    return tuple(item for item in loc if isinstance(item, int)
                 or not (item in names or "[" in item or "(" in item or item.startswith("function-")))


def _problems(err: ValidationError) -> list[str]:
    problems: list[str] = []
    by_path: dict[str, int] = {}  # several union branches failing at one place: one line
    errors = err.errors()
    # Inside a union, a wrong key beats the "is not a string" of the other branches.
    extras = {_clean_loc(e["loc"][:-1]) for e in errors if e["type"] == "extra_forbidden"}
    for error in errors:
        loc = _clean_loc(error["loc"])
        if error["type"] == "extra_forbidden":
            # The unknown key is the user's own text: kept as it is, even when it looks like
            # one of pydantic's union tags ("0[" once emptied the location and crashed here).
            loc = (*_clean_loc(error["loc"][:-1]), error["loc"][-1])
        if error["type"] != "extra_forbidden" and any(loc[:len(x)] == x for x in extras):
            continue
        if error["type"] == "extra_forbidden":
            key = loc[-1]
            where = _where(loc[:-1]) or "the top level"
            allowed = _allowed_keys(error["loc"][:-1])
            hint = ""
            close = difflib.get_close_matches(str(key), [k for k in allowed if k != key], n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
            elif allowed:
                hint = f" (allowed: {', '.join(allowed)})"
            text = f"unknown key {key!r} in {where}{hint}"
        elif error["type"] == "missing" and isinstance(loc[-1], int):
            text = f"{_where(loc[:-1])}: too few values"
        elif error["type"] == "missing":
            where = _where(loc[:-1]) or "the top level"
            text = f"{where}: {loc[-1]!r} is required"
        else:
            message = error["msg"].removeprefix("Value error, ")
            where = _where(loc) or "recipe"
            if where in by_path:
                index = by_path[where]
                if message not in problems[index]:
                    problems[index] += f"; or: {message}"
                continue
            by_path[where] = len(problems)
            text = f"{where}: {message}"
        if text not in problems:
            problems.append(text)
    return problems or [str(err)]


def _unwrap(tp: Any) -> Any:
    """The spec class (or list/dict type) inside Annotated/Optional/Union annotations."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            specs = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
            containers = [a for a in members if get_origin(a) in (list, dict)]
            tp = (specs or containers or members)[0]
        else:
            return tp


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys the spec at `loc` takes, for "did you mean" hints."""
    branches = {cls.__name__: cls for cls in _SPECS} | {
        "model_token": ModelTokenSource, "zero": ZeroSource, "model-ref": ModelRef}
    tp: Any = Recipe
    for item in loc:
        if isinstance(item, str) and item in branches:  # the union branch pydantic tried
            tp = branches[item]
            continue
        if isinstance(item, str) and ("[" in item or "(" in item or item.startswith("function-")):
            continue
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
            if item not in fields:
                return []
            tp = fields[item].annotation
        elif get_origin(tp) in (list, tuple):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


_SPECS = (ModelPath, ModelRef, Conditional, InputModel, InputSlice, OutputSlice, OutputModule,
          ModelTokenSource, ZeroSource, TokenEmbedding, TokenizerSpec, GraftSpec, ValidationGate,
          ValidationSpec, Recipe)
