"""Model Stock: move from the base towards the average of the fine-tunes by
t = N·cosθ / (1 + (N - 1)·cosθ), θ the mean pairwise angle between their task vectors, over the
whole tensor or per row (filter_wise). Computes in the inputs' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodSpec, Param

if TYPE_CHECKING:
    import torch

NORM_PRODUCT_FLOOR = 1e-6
SINGULAR = 1e-6  # |1 + (N - 1)·cosθ| below this: no finite estimate, keep the base


def model_stock(base: torch.Tensor, models: list[torch.Tensor], *, filter_wise: bool) -> torch.Tensor:
    import torch

    shape = base.shape
    if filter_wise:
        if base.dim() == 1:
            base, models = base.unsqueeze(0), [m.unsqueeze(0) for m in models]
    else:
        base, models = base.reshape(-1), [m.reshape(-1) for m in models]

    offsets = [m - base for m in models]
    cosines = []
    for i, first in enumerate(offsets):
        for second in offsets[i + 1 :]:
            norms = torch.norm(first, dim=-1) * torch.norm(second, dim=-1)
            cosines.append(((first * second).sum(dim=-1) / norms.clamp(min=NORM_PRODUCT_FLOOR)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(models)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < SINGULAR
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)
    average = sum(models) / n
    return (t * average + (1 - t) * base).reshape(shape)


@dataclass(frozen=True, kw_only=True)
class ModelStock(MethodSpec):
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
        assert base is not None
        return model_stock(base, tensors, filter_wise=global_params["filter_wise"])


MODEL_STOCK = register(ModelStock(
    name="model_stock",
    params=(Param("filter_wise", "bool", per_model=False, default=False,
                  help="one angle per row instead of one for the whole tensor"),),
    base_policy="required",
    min_models=2,
    reference="https://arxiv.org/abs/2403.19522",
))
