"""TIES: keep each task vector's largest-magnitude entries, elect a sign per entry by the weighted sum,
and add up only the entries that agree with it (divided by their weights when normalize).
"""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

TIES = register(GeneralizedTaskArithmetic(
    name="ties",
    params=params_for("magnitude", normalize=True, rescale=False),
    pruning="magnitude",
    consensus="sum",
    deterministic=True,
    reference="https://arxiv.org/abs/2306.01708",
))
