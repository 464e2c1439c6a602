"""The merge method and its parameters: the method looked up, every parameter the recipe sets
checked before any model is read, and the values resolved for each output tensor (method-wide
ones by the output tensor's name, per-model ones by that model's input tensor name)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any, cast

from apps.assembly.engine.methods.registry import METHOD_NAMES, get_method
from apps.assembly.engine.methods.spec import MethodParamError, MethodSpec, Param

from ..recipe import parameter, setting_scalars
from .context import PlanContext
from .errors import (
    BaseModelRequiredError,
    MisplacedParameterError,
    MissingParameterError,
    ParameterValueError,
    UnknownMethodError,
    UnknownParameterError,
)
from .result import OutputTensor

# mergekit methods Audobon has no implementation of (yet): named in the unknown-method error.
MERGEKIT_ONLY = ("sce", "multislerp", "nearswap", "karcher", "arcee_fusion")


def find_method(name: str) -> MethodSpec:
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


# -- before any model is read ----------------------------------------------------------------


def _levels(ctx: PlanContext) -> Iterable[tuple[str, dict | None, str]]:
    recipe = ctx.recipe
    yield "parameters", recipe.parameters, "global"
    for i, entry in enumerate(recipe.models or []):
        yield f"models[{i}] ({entry.model}) parameters", entry.parameters, "model"
    for i, out in enumerate(recipe.slices or []):
        yield f"slices[{i}] parameters", out.parameters, "slice"
        for j, source in enumerate(out.sources):
            yield f"slices[{i}].sources[{j}] ({source.model}) parameters", source.parameters, "model"


def _known_params(ctx: PlanContext) -> str:
    wide = ", ".join(n for n, p in ctx.params.items() if not p.per_model) or "none"
    each = ", ".join(n for n, p in ctx.params.items() if p.per_model) or "none"
    return f"it takes method-wide: {wide}; per-model: {each}"


def check_parameters(ctx: PlanContext) -> None:
    """Every parameter the recipe sets, at every level, is one the method takes, set where it
    has an effect, with a value it accepts."""
    method = ctx.method.name
    for where, params, level in _levels(ctx):
        for name, setting in (params or {}).items():
            param = ctx.params.get(name)
            if param is None:
                close = difflib.get_close_matches(name, list(ctx.params), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UnknownParameterError(f"{where}: merge method {method!r} has no parameter "
                                            f"{name!r}{hint}; {_known_params(ctx)}")
            if level == "model" and not param.per_model:
                raise MisplacedParameterError(
                    f"{where}: {name!r} is a method-wide parameter of {method!r}; set for one model "
                    "it has no effect (mergekit ignores it): move it to the slice's or the top-level "
                    "parameters")
            for value in setting_scalars(setting):
                check_value(ctx, param, value, where)


def check_value(ctx: PlanContext, param: Param, value: Any, where: str) -> Any:
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
            if warning not in ctx.warnings:
                ctx.warnings.append(warning)
            value = number
    problem = param.complaint(value)
    if problem is not None:
        raise ParameterValueError(f"{where}: {param.name} {problem}")
    return value


def check_base_given(ctx: PlanContext) -> None:
    if ctx.base_policy != "required" or ctx.recipe.base_model is not None:
        return
    if ctx.recipe.slices and all(s.base_model is not None for s in ctx.recipe.slices):
        return
    raise BaseModelRequiredError(f"merge method {ctx.method.name!r} needs a base_model, and the recipe "
                                 "has none")


# -- per output tensor -----------------------------------------------------------------------


def resolve_params(ctx: PlanContext, out: OutputTensor) -> None:
    """Fill in `out.params` (method-wide) and each non-base source's `params` (per-model),
    defaults included, as the method resolves them."""
    sl = ctx.slices[out.slice or 0]
    method = ctx.method.name
    globals_: dict[str, Any] = {}
    for p in ctx.params.values():
        if p.per_model:
            continue
        value, _ = parameter(p.name, tensor_name=out.name, t=out.t, model=None, slice_sources=sl.specs,
                             slice_parameters=sl.parameters, global_parameters=ctx.recipe.parameters)
        if value is None:
            if p.required:
                raise MissingParameterError(f"merge method {method!r} needs parameter {p.name!r} (for "
                                            f"tensor {out.name}); set it in the top-level or the slice's "
                                            "parameters")
            continue
        globals_[p.name] = check_value(ctx, p, value, f"tensor {out.name}")
    per_model: list[dict[str, Any]] = []
    for src in out.sources:
        if src.role == "base":
            continue
        values: dict[str, Any] = {}
        # Per-model filters see the model's own tensor name (the head's for a tied embedding).
        name = out.name if src.note and src.note.startswith("tied") else src.tensor
        ref = next(s.ref for s in sl.sources if s.key == src.model)
        for p in ctx.params.values():
            if not p.per_model:
                continue
            value, _ = parameter(p.name, tensor_name=name, t=out.t, model=ref, slice_sources=sl.specs,
                                 slice_parameters=sl.parameters, global_parameters=ctx.recipe.parameters)
            if value is None:
                if p.required:
                    raise MissingParameterError(
                        f"merge method {method!r} needs parameter {p.name!r} for model {src.model!r} "
                        f"(tensor {src.tensor}); set it under the model's parameters, the slice's, or "
                        "the top level")
                continue
            values[p.name] = check_value(ctx, p, value, f"model {src.model!r}, tensor {src.tensor}")
        per_model.append(values)
    resolved_global, resolved_models = _validate(ctx, out, globals_, per_model)
    out.params = resolved_global
    for src, values in zip([s for s in out.sources if s.role != "base"], resolved_models, strict=True):
        src.params = values


def _validate(ctx: PlanContext, out: OutputTensor, globals_: dict,
              per_model: list[dict]) -> tuple[dict, list[dict]]:
    try:
        return ctx.method.resolve(globals_, per_model)
    except MethodParamError as err:
        models = [s.model for s in out.sources if s.role != "base"]
        message = re.sub(r"model index (\d+)", lambda m: f"model {models[int(m[1])]!r}", str(err))
        raise ParameterValueError(f"tensor {out.name}: {message}") from None
