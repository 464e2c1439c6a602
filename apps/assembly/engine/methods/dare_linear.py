"""DARE, linear: drop task-vector entries at random (keep each with probability density), rescale, and
add the weighted sum.
"""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

DARE_LINEAR = register(GeneralizedTaskArithmetic(
    name="dare_linear",
    params=params_for("random", normalize=False, rescale=True),
    pruning="random",
    consensus=None,
    deterministic=False,
    reference="https://arxiv.org/abs/2311.03099",
))
