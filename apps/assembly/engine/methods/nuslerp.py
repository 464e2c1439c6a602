"""NuSLERP: spherical interpolation of two models with t = weight_2 / (weight_1 + weight_2),
over the whole tensor (nuslerp_flatten, the default), or per row or column. With a base, it
interpolates the two task vectors and adds the result to the base. Computes in the inputs' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodSpec, Param

if TYPE_CHECKING:
    import torch

EPS = 1e-8  # vectors with 1 - cos² <= EPS² are colinear: linear interpolation
NORM_FLOOR = 1e-7  # smallest norm divided by when normalising
ZERO_WEIGHT_SUM = 1e-6  # weights summing to about 0 give t = 0.5


def nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int = -1, flatten: bool = False
) -> torch.Tensor:
    import torch

    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)

    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos))  # keeps the unused branch finite
    sin_theta = torch.sin(theta)
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    out = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)

    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


@dataclass(frozen=True, kw_only=True)
class NuSlerp(MethodSpec):
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
        w0, w1 = per_model[0]["weight"], per_model[1]["weight"]
        total = w0 + w1
        t = 0.5 if abs(total) < ZERO_WEIGHT_SUM else w1 / total
        dim = 0 if global_params["nuslerp_row_wise"] else -1
        flatten = global_params["nuslerp_flatten"]
        if base is None:
            return nuslerp(t, tensors[0], tensors[1], dim=dim, flatten=flatten)
        return base + nuslerp(t, tensors[0] - base, tensors[1] - base, dim=dim, flatten=flatten)


NUSLERP = register(NuSlerp(
    name="nuslerp",
    params=(
        Param("weight", "float", per_model=True, help="relative weight; t = w2 / (w1 + w2)"),
        Param("nuslerp_row_wise", "bool", per_model=False, default=False,
              help="interpolate along dim 0 (column vectors) instead of rows, when not flattened"),
        Param("nuslerp_flatten", "bool", per_model=False, default=True,
              help="treat the whole tensor as one vector"),
    ),
    base_policy="optional",
    min_models=2,
    max_models=2,
))
