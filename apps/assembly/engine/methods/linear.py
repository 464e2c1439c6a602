"""Linear (model soup): the weighted sum of the models' tensors, divided by the sum of the weights
when normalize. Computes in float32 (float64 for float64 inputs), rounds once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodParamError, MethodSpec, Param

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class Linear(MethodSpec):
    def check(self, global_params: dict[str, Any], per_model: list[dict[str, Any]]) -> None:
        # mergekit would divide by zero here and write inf/NaN weights.
        if global_params["normalize"] and sum(v["weight"] for v in per_model) == 0:
            raise MethodParamError(f"{self.name}: the weights sum to 0, which normalize cannot divide by")

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
        import torch

        dtype = tensors[0].dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        # One row of weights, reduced along dim 1: the same float32 sum as mergekit's batch kernel.
        weights = torch.tensor([[v["weight"] for v in per_model]], dtype=work, device=tensors[0].device)
        total = torch.zeros_like(tensors[0], dtype=work)
        for tensor, weight in zip(tensors, weights[0].unbind(0), strict=True):
            total.addcmul_(tensor, weight)
        if global_params["normalize"]:
            total.div_(weights.sum(dim=1))
        return total.to(dtype)


LINEAR = register(Linear(
    name="linear",
    params=(
        Param("weight", "float", per_model=True, help="weight of this model"),
        Param("normalize", "bool", per_model=False, default=True, help="divide by the sum of the weights"),
    ),
    base_policy="ignored",
    min_models=1,
    reference="https://arxiv.org/abs/2203.05482",
))
