"""SLERP: spherical interpolation from the base (t = 0) to the other model (t = 1), over the
whole tensor as one vector. Nearly colinear or opposite pairs (|cos| > DOT_THRESHOLD) fall back to
linear interpolation. Computes in float32 (float64 for float64 inputs); the result is stored in
the inputs' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodSpec, Param

if TYPE_CHECKING:
    import torch

DOT_THRESHOLD = 0.9995
EPS = 1e-8  # a norm at or below this counts as a zero vector (not normalised)
# Elements converted to float32 at a time, so a huge embedding does not need a float32 copy.
CHUNK_ELEMENTS = 1024 * 1024


def _chunks(count: int) -> range:
    return range(0, count, CHUNK_ELEMENTS)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    import torch

    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    # Rows of one: the same reductions, in the same order, as mergekit's batched kernel.
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    t_ = torch.tensor([t], dtype=work, device=v0.device).reshape(-1, 1)
    if a.shape[1] == 0:
        return ((1 - t_) * a + t_ * b).reshape(v0.shape).to(v0.dtype)

    def part(x: torch.Tensor, start: int) -> torch.Tensor:
        return x[:, start : start + CHUNK_ELEMENTS].to(work)

    # The norm of the chunk norms is the norm, without squaring (no overflow).
    norm_a = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(part(a, s), dim=1, keepdim=True) for s in _chunks(a.shape[1])]), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(part(b, s), dim=1, keepdim=True) for s in _chunks(a.shape[1])]), dim=0)
    norm_a = torch.where(norm_a > EPS, norm_a, 1)
    norm_b = torch.where(norm_b > EPS, norm_b, 1)
    # Normalised before multiplying, so the dot of two large vectors cannot overflow.
    dot = torch.stack([
        ((part(a, s) / norm_a) * (part(b, s) / norm_b)).sum(dim=1, keepdim=True) for s in _chunks(a.shape[1])
    ]).sum(dim=0).clamp(-1, 1)
    lerp = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(lerp, 0, dot))  # finite on both branches of the where below
    sin_theta = torch.sin(theta)
    coef_a = torch.where(lerp, 1 - t_, torch.sin((1 - t_) * theta) / sin_theta)
    coef_b = torch.where(lerp, t_, torch.sin(t_ * theta) / sin_theta)

    out = torch.empty_like(a)
    for s in _chunks(a.shape[1]):
        out[:, s : s + CHUNK_ELEMENTS] = coef_a * part(a, s) + coef_b * part(b, s)
    return out.reshape(v0.shape)


@dataclass(frozen=True, kw_only=True)
class Slerp(MethodSpec):
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
        return slerp(global_params["t"], base, tensors[0])


SLERP = register(Slerp(
    name="slerp",
    params=(Param("t", "float", per_model=False, help="0 gives the base, 1 the other model"),),
    base_policy="required",
    min_models=1,
    max_models=1,
    reference="https://en.wikipedia.org/wiki/Slerp",
))
