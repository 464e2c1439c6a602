"""Graft (Audobon's own): a component swapped in from a donor model. The donor's tensor is taken
unchanged, dtype included; the only check is that it fits the place it goes to (the base tensor,
when given, is the receiving model's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class Graft(MethodSpec):
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
        return tensors[0]  # shapes were checked against the base in merge()


GRAFT = register(Graft(
    name="graft",
    base_policy="optional",
    min_models=1,
    max_models=1,
    floating_only=False,
    promote_dtypes=False,
))
