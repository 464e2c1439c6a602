"""What every merge method shares: its parameters, their validation, the tensor checks, and the
seeded per-tensor random generator. No torch import here (only inside functions), so the registry
and a recipe's parameter check stay cheap; the method modules likewise import torch only inside
the functions that compute (annotations name it under TYPE_CHECKING).

Tensor convention, the same for every method:
    tensors    the models' tensors, in recipe order, base excluded
    base       the base model's tensor, or None (see `base_policy`)
    per_model  one dict of per-model parameters for each entry of `tensors`

As in mergekit 0.1.5, the inputs are promoted to one dtype (`torch.promote_types` over base and
models) and the method computes in it, except where a method says otherwise (linear and slerp
work in float32; DARE/DELLA prune in float32 on CPU unless the input is bfloat16, so a float64
task vector passes through float32 there).
A caller that wants mergekit's `dtype:` casts the tensors before `merge`, and its `out_dtype:`
casts the result after.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

BasePolicy = Literal["required", "optional", "ignored"]


class MethodParamError(ValueError):
    """A recipe's parameters do not fit the method; the message names method and parameter."""


class MethodInputError(ValueError):
    """The tensors handed to a method do not fit it (count, shape, dtype, base)."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Interval:
    """A real interval with open or closed ends; `str()` reads like "(0, 1]"."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        def end(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"

        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"{left}{end(self.low)}, {end(self.high)}{right}"


UNIT_OPEN_CLOSED = Interval(0.0, 1.0, low_open=True)  # (0, 1]: a density that keeps something
UNIT_CLOSED = Interval(0.0, 1.0)  # [0, 1]
NON_NEGATIVE = Interval(0.0)


@dataclass(frozen=True)
class Param:
    """One parameter of a method: per model (weight, density…) or method-wide (normalize, t…)."""

    name: str
    kind: Literal["float", "bool"]
    per_model: bool
    default: Any = REQUIRED
    interval: Interval | None = None  # floats only
    nullable: bool = False  # None allowed (passthrough's scale)
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def complaint(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None. bool is not a number here: True as a weight is a
        typo far more often than a wish."""
        if value is None:
            return None if self.nullable else "must be set, got None"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be finite, got {value!r}"
        if self.interval is not None and value not in self.interval:
            return f"must be in {self.interval}, got {value!r}"
        return None


@runtime_checkable
class MergeMethod(Protocol):
    name: str
    needs_base: bool  # task arithmetic family, model_stock, slerp
    deterministic: bool  # False for dare_*, della* (random pruning)
    tensor_params: tuple[str, ...]  # per-model parameters
    global_params: tuple[str, ...]  # method-wide parameters

    def validate(self, global_params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]]) -> None: ...

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        per_model: Sequence[Mapping[str, Any]],
        global_params: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        workers: int = 1,
        consume: bool = False,
    ) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class MethodSpec(ABC):
    """The shared part of every method: parameter table, checks, dtype alignment.

    A method subclasses this, implements `compute` on checked, aligned tensors and parameters
    with their defaults filled in, and registers one instance in its module.
    """

    name: str
    params: tuple[Param, ...] = ()
    base_policy: BasePolicy = "required"
    deterministic: bool = True
    min_models: int = 1  # models besides the base
    max_models: int | None = None
    floating_only: bool = True
    promote_dtypes: bool = True  # graft keeps the donor's tensor exactly as it is
    reference: str = ""

    @property
    def splits_by_model(self) -> bool:
        """Whether `compute` can use `workers` threads, one per model, with the same result."""
        return False

    @property
    def needs_base(self) -> bool:
        return self.base_policy == "required"

    @property
    def tensor_params(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.per_model)

    @property
    def global_params(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if not p.per_model)

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    # -- parameters -------------------------------------------------------------------------------

    def validate(self, global_params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]]) -> None:
        self.resolve(global_params, per_model)

    def resolve(
        self, global_params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The parameters checked, with defaults filled in; raises MethodParamError."""
        if not isinstance(global_params, Mapping):
            raise MethodParamError(f"{self.name}: method-wide parameters must be a mapping")
        if isinstance(per_model, Mapping | str) or not isinstance(per_model, Sequence):
            raise MethodParamError(f"{self.name}: per-model parameters must be a list, one mapping a model")
        self._check_count(len(per_model))
        resolved_global = self._resolve_one(global_params, per_model=False, where="")
        resolved_models = []
        for index, values in enumerate(per_model):
            if not isinstance(values, Mapping):
                raise MethodParamError(f"{self.name}: parameters for model index {index} must be a mapping")
            where = f" for model index {index}"
            resolved_models.append(self._resolve_one(values, per_model=True, where=where))
        self.check(resolved_global, resolved_models)
        return resolved_global, resolved_models

    def check(self, global_params: dict[str, Any], per_model: list[dict[str, Any]]) -> None:  # noqa: B027
        """Checks that involve several parameters at once; a method overrides it."""

    def _check_count(self, count: int) -> None:
        def models(n: int) -> str:
            besides = " besides the base" if self.base_policy != "ignored" else ""
            return f"{n} model{'' if n == 1 else 's'}{besides}"

        low, high = self.min_models, self.max_models
        if low == high and count != low:
            raise MethodParamError(f"{self.name}: needs exactly {models(low)}, got {count}")
        if count < low:
            raise MethodParamError(f"{self.name}: needs at least {models(low)}, got {count}")
        if high is not None and count > high:
            raise MethodParamError(f"{self.name}: takes at most {models(high)}, got {count}")

    def _known(self) -> str:
        wide = ", ".join(sorted(self.global_params)) or "none"
        each = ", ".join(sorted(self.tensor_params)) or "none"
        return f"known parameters: method-wide: {wide}; per-model: {each}"

    def _resolve_one(self, values: Mapping[str, Any], *, per_model: bool, where: str) -> dict[str, Any]:
        by_name = {p.name: p for p in self.params}
        for key in values:
            param = by_name.get(key)
            if param is None:
                raise MethodParamError(f"{self.name}: unknown parameter {key!r}{where}; {self._known()}")
            if param.per_model != per_model:
                kind = "a per-model parameter: set it for each model" if param.per_model else (
                    "a method-wide parameter, not a per-model one")
                raise MethodParamError(f"{self.name}: {key} is {kind}{where}")
        out: dict[str, Any] = {}
        for param in self.params:
            if param.per_model != per_model:
                continue
            if param.name not in values:
                if param.required:
                    raise MethodParamError(f"{self.name}: {param.name} is required{where}")
                out[param.name] = param.default
                continue
            value = values[param.name]
            problem = param.complaint(value)
            if problem is not None:
                raise MethodParamError(f"{self.name}: {param.name} {problem}{where}")
            out[param.name] = float(value) if param.kind == "float" and value is not None else value
        return out

    # -- tensors ----------------------------------------------------------------------------------

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        per_model: Sequence[Mapping[str, Any]],
        global_params: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        workers: int = 1,
        consume: bool = False,
    ) -> torch.Tensor:
        """One output tensor. `generator` drives the random methods (see `tensor_generator`);
        without it they draw from torch's global generator, like mergekit. `workers`: how many
        threads a method may use for independent parts (the result does not depend on it).
        `consume`: the caller hands its list over (it is emptied), so a method may free each
        model's tensor once it has used it."""
        resolved_global, resolved_models = self.resolve(global_params, per_model)
        aligned, aligned_base = self._check_tensors(list(tensors), base, len(resolved_models))
        if consume and isinstance(tensors, list):
            tensors.clear()
        # `aligned` is this call's own list: `compute` may drop its entries as it goes.
        return self.compute(aligned, aligned_base, resolved_models, resolved_global, generator=generator,
                            workers=workers)

    @abstractmethod
    def compute(
        self,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        per_model: list[dict[str, Any]],
        global_params: dict[str, Any],
        *,
        generator: torch.Generator | None,
        workers: int = 1,
    ) -> torch.Tensor:
        """The method's math on already-checked tensors (each method's module defines it)."""

    def _check_tensors(
        self, tensors: list[torch.Tensor], base: torch.Tensor | None, count: int
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        import torch

        if len(tensors) != count:
            raise MethodInputError(f"{self.name}: got {len(tensors)} tensor(s) for {count} model(s)")
        if base is None and self.base_policy == "required":
            raise MethodInputError(f"{self.name}: needs the base model's tensor")
        if base is not None and self.base_policy == "ignored":
            raise MethodInputError(
                f"{self.name}: takes no base tensor; list the base among the models if it takes part")
        everything = [*tensors, *([base] if base is not None else [])]
        first = everything[0]
        for t in everything[1:]:
            if t.shape != first.shape:
                shapes = [tuple(x.shape) for x in tensors]
                base_shape = f", base {tuple(base.shape)}" if base is not None else ""
                raise MethodInputError(f"{self.name}: shapes differ: models {shapes}{base_shape}")
            if t.device != first.device:
                raise MethodInputError(f"{self.name}: tensors are on different devices")
        if self.floating_only and not all(t.is_floating_point() for t in everything):
            raise MethodInputError(f"{self.name}: needs floating-point tensors, got {first.dtype}")
        if not self.promote_dtypes:
            return tensors, base
        dtype = first.dtype
        for t in everything[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        return [t.to(dtype) for t in tensors], (base.to(dtype) if base is not None else None)


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one tensor, from the run's seed and the tensor's name only, so a tensor's
    random mask does not depend on which tensors were merged before it."""
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def tensor_generator(seed: int, name: str, device: Any = "cpu") -> torch.Generator:
    """A torch.Generator for one tensor, seeded by `derive_seed`; `device` must be the tensors'
    device (torch.bernoulli on CUDA needs a CUDA generator)."""
    import torch

    return torch.Generator(device=device).manual_seed(derive_seed(seed, name))
