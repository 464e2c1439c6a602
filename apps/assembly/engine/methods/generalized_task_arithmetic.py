"""The task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*, della*): every model's
task vector (model - base) is pruned, weighted, optionally sign-elected (TIES), summed, optionally
divided by the summed weights, scaled by lambda and added to the base.

As in mergekit 0.1.5, the arithmetic runs in the inputs' (promoted) dtype: the weights too are
rounded to it, so bfloat16 inputs merge in bfloat16.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .sparsify import Pruning, prune
from .spec import NON_NEGATIVE, UNIT_CLOSED, UNIT_OPEN_CLOSED, MethodParamError, MethodSpec, Param

if TYPE_CHECKING:
    import torch

Consensus = Literal["sum", "count"]

ORDER_FREE_PRUNING = frozenset({"magnitude", "magnitude_outliers"})  # no random draws
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
    del votes
    return signs == majority


@dataclass(frozen=True, kw_only=True)
class GeneralizedTaskArithmetic(MethodSpec):
    pruning: Pruning | None = None
    consensus: Consensus | None = None

    @property
    def splits_by_model(self) -> bool:
        return self.pruning in ORDER_FREE_PRUNING

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
        workers: int = 1,
    ) -> torch.Tensor:
        import torch

        assert base is not None
        deltas = base.new_empty((len(tensors), *base.shape))

        # Every task vector first, straight into its row where no dtype promotion is involved,
        # each model's tensor let go as soon as it is used (merge's own list; the caller's copy
        # too when it handed it over): the sorts below then run with one full-size tensor per
        # model fewer alive.
        promoted: dict[int, torch.Tensor] = {}
        for index in range(len(tensors)):
            if tensors[index].dtype == base.dtype:
                torch.sub(tensors[index], base, out=deltas[index])
            else:
                promoted[index] = tensors[index] - base
            tensors[index] = None

        def task_vector(index: int) -> None:
            if self.pruning is None:
                if index in promoted:
                    deltas[index] = promoted.pop(index)
                return
            values = per_model[index]
            own = index not in promoted
            delta = prune(
                self.pruning, deltas[index] if own else promoted.pop(index), density=values["density"],
                rescale=global_params["rescale"], gamma=values.get("gamma", 0.0),
                epsilon=values.get("epsilon", 0.0), generator=generator, inplace=own,
            )
            if delta.data_ptr() != deltas[index].data_ptr():
                deltas[index] = delta

        # Deterministic pruning sorts each model's task vector on its own: those sorts may run side
        # by side (a CPU sort uses one core). Random pruning draws from one generator in model
        # order, so it stays in order.
        side_by_side = min(workers, len(tensors)) if self.pruning in ORDER_FREE_PRUNING else 1
        if side_by_side > 1:
            with ThreadPoolExecutor(max_workers=side_by_side) as pool:
                list(pool.map(task_vector, range(len(tensors))))
        else:
            for index in range(len(tensors)):
                task_vector(index)
        # Weights in the deltas' dtype, shaped to broadcast over each model's slice.
        weights = torch.tensor([v["weight"] for v in per_model], dtype=deltas.dtype, device=deltas.device)
        weights = weights.reshape(len(per_model), *([1] * base.dim()))
        deltas.mul_(weights)

        if self.consensus is not None:
            mask_dtype = torch.int8 if global_params["int8_mask"] else base.dtype
            agree = elect_signs(deltas, self.consensus, mask_dtype)
            # In place over the deltas, which are not needed after: the same numbers as mergekit's
            # (deltas * agree).sum(0) and (weights * agree).sum(0), with less memory.
            merged = deltas.mul_(agree).sum(dim=0)
            divisor = torch.mul(weights, agree, out=deltas).sum(dim=0)  # the weights that took part
            del agree
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
