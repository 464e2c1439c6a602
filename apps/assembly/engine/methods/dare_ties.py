"""DARE with TIES sign election: random pruning, then only entries agreeing with the elected sign are
added.
"""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

DARE_TIES = register(GeneralizedTaskArithmetic(
    name="dare_ties",
    params=params_for("random", normalize=False, rescale=True),
    pruning="random",
    consensus="sum",
    deterministic=False,
    reference="https://arxiv.org/abs/2311.03099",
))
