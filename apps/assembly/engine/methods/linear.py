"""Linear (model soup): the weighted sum of the models' tensors, divided by the sum of the weights
when normalize. Computes in float32 (float64 for float64 inputs), rounds once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import register
from .spec import MethodParamError, MethodSpec, Param

CHUNK = 1 << 17  # elements summed at once on a CPU: 512 KB of float32, within a core's cache

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
        device = tensors[0].device
        work = torch.float64 if dtype == torch.float64 else torch.float32
        # One row of weights, reduced along dim 1: the same float32 sum as mergekit's batch kernel.
        weights = torch.tensor([[v["weight"] for v in per_model]], dtype=work, device=device)
        total = weights.sum(dim=1) if global_params["normalize"] else None
        if total is not None and float(total) == 1.0:
            total = None  # x / 1 is x, to the bit (NaN, infinities and -0 included)
        out = torch.empty(tensors[0].shape, dtype=dtype, device=device)
        flat_out = out.view(-1)
        flats = [t.reshape(-1) for t in tensors]
        n = flat_out.numel()
        # On a CPU, a slice at a time, so the float32 sum stays in the core's cache instead of
        # going through memory once per model and step; each element sees the same operations
        # (addcmul's fused multiply-add, in model order) as on the whole tensor, so the result is
        # the same to the bit.
        chunk = n if device.type != "cpu" else min(n, CHUNK)
        scratch = torch.empty(chunk, dtype=work, device=device)
        for start in range(0, n, max(chunk, 1)):
            stop = min(n, start + chunk)
            acc = scratch[:stop - start]
            acc.zero_()
            for flat, weight in zip(flats, weights[0].unbind(0), strict=True):
                acc.addcmul_(flat[start:stop], weight)
            if total is not None:
                acc.div_(total)
            flat_out[start:stop].copy_(acc)
        return out


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
