"""Passthrough: one model's tensor as it is, optionally multiplied by `scale` (mergekit's
layer-stacking building block)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodSpec, Param

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class Passthrough(MethodSpec):
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
        scale = per_model[0]["scale"]
        return tensors[0] if scale is None else tensors[0] * scale


PASSTHROUGH = register(Passthrough(
    name="passthrough",
    params=(Param("scale", "float", per_model=True, default=None, nullable=True,
                  help="multiply the tensor by this"),),
    base_policy="ignored",
    min_models=1,
    max_models=1,
    floating_only=False,
))
