"""The task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*, della*): every model's
task vector (model - base) is pruned, weighted, optionally sign-elected (TIES), summed, optionally
divided by the summed weights, scaled by lambda and added to the base.

As in mergekit 0.1.5, the arithmetic runs in the inputs' (promoted) dtype: the weights too are
rounded to it, so bfloat16 inputs merge in bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .sparsify import Pruning, prune
from .spec import NON_NEGATIVE, UNIT_CLOSED, UNIT_OPEN_CLOSED, MethodParamError, MethodSpec, Param

if TYPE_CHECKING:
    import torch

Consensus = Literal["sum", "count"]

# Where the plain sum of weights is this close to 0, mergekit leaves the sum undivided.
ZERO_WEIGHT_SUM = 1e-8


def params_for(pruning: Pruning | None, *, normalize: bool, rescale: bool) -> tuple[Param, ...]:
    """mergekit's parameter table for one member of the family, with its defaults."""
    params = [
        Param("int8_mask", "bool", per_model=False, default=False,
              help="hold the sign mask in int8 (less memory; same result)"),
        Param("normalize", "bool", per_model=False, default=normalize,
              help="divide by the sum of the weights that take part"),
        Param("rescale", "bool", per_model=False, default=rescale,
              help="after pruning, scale kept entries back to the task vector's L1 norm"),
        Param("lambda", "float", per_model=False, default=1.0, help="scale of the merged task vector"),
        Param("weight", "float", per_model=True, help="weight of this model's task vector"),
        Param("density", "float", per_model=True, default=1.0, interval=UNIT_OPEN_CLOSED,
              help="share of the task vector's entries kept"),
    ]
    if pruning == "magnitude_outliers":
        params.append(Param("gamma", "float", per_model=True, default=0.01, interval=UNIT_CLOSED,
                            help="share of largest-magnitude entries dropped as outliers"))
    if pruning == "della_magprune":
        params.append(Param("epsilon", "float", per_model=True, default=0.15, interval=NON_NEGATIVE,
                            help="keep probability spread around density by magnitude rank; "
                                 "density ± epsilon must stay in (0, 1)"))
    return tuple(params)


def elect_signs(deltas: torch.Tensor, consensus: Consensus, mask_dtype: torch.dtype) -> torch.Tensor:
    """TIES sign election over dim 0: True where a model's entry has the majority sign.
    "sum": the sign of the summed (weighted) entries; "count": the sign most models have.
    A zero entry has sign 0 and never takes part; a tie goes to +."""
    signs = deltas.sign().to(mask_dtype)
    votes = deltas.sum(dim=0) if consensus == "sum" else signs.sum(dim=0)
    majority = (votes >= 0).to(mask_dtype) * 2 - 1
    return signs == majority


@dataclass(frozen=True, kw_only=True)
class GeneralizedTaskArithmetic(MethodSpec):
    pruning: Pruning | None = None
    consensus: Consensus | None = None

    def check(self, global_params: dict[str, Any], per_model: list[dict[str, Any]]) -> None:
        if self.pruning != "della_magprune":
            return
        for index, values in enumerate(per_model):
            density, epsilon = values["density"], values["epsilon"]
            if density < 1 and (density - epsilon <= 0 or density + epsilon >= 1):
                raise MethodParamError(
                    f"{self.name}: density ± epsilon must stay inside (0, 1), got density={density:g}, "
                    f"epsilon={epsilon:g} for model index {index}")

    def compute(
        self,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        per_model: list[dict[str, Any]],
        global_params: dict[str, Any],
        *,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        import torch

        assert base is not None
        deltas = base.new_empty((len(tensors), *base.shape))
        for index, (tensor, values) in enumerate(zip(tensors, per_model, strict=True)):
            delta = tensor - base
            if self.pruning is not None:
                delta = prune(
                    self.pruning, delta, density=values["density"], rescale=global_params["rescale"],
                    gamma=values.get("gamma", 0.0), epsilon=values.get("epsilon", 0.0), generator=generator,
                )
            deltas[index] = delta
            del delta
        # Weights in the deltas' dtype, shaped to broadcast over each model's slice.
        weights = torch.tensor([v["weight"] for v in per_model], dtype=deltas.dtype, device=deltas.device)
        weights = weights.reshape(len(per_model), *([1] * base.dim()))
        deltas.mul_(weights)

        if self.consensus is not None:
            mask_dtype = torch.int8 if global_params["int8_mask"] else base.dtype
            agree = elect_signs(deltas, self.consensus, mask_dtype)
            merged = (deltas * agree).sum(dim=0)
            divisor = (weights * agree).sum(dim=0)  # per entry: the weights that took part
            divisor[divisor == 0] = 1
        else:
            merged = deltas.sum(dim=0)
            divisor = weights.sum(dim=0)
            divisor[divisor.abs() < ZERO_WEIGHT_SUM] = 1
        if global_params["normalize"]:
            merged /= divisor
        if global_params["lambda"] != 1:
            merged *= global_params["lambda"]
        return (base + merged).to(base.dtype)
