"""Model Breadcrumbs: drop both the largest (gamma share) and the smallest task-vector entries, keep
density, and add the weighted sum.
"""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

BREADCRUMBS = register(GeneralizedTaskArithmetic(
    name="breadcrumbs",
    params=params_for("magnitude_outliers", normalize=False, rescale=False),
    pruning="magnitude_outliers",
    consensus=None,
    deterministic=True,
    reference="https://arxiv.org/abs/2312.06795",
))
