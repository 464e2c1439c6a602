"""Model Breadcrumbs pruning with TIES sign election."""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

BREADCRUMBS_TIES = register(GeneralizedTaskArithmetic(
    name="breadcrumbs_ties",
    params=params_for("magnitude_outliers", normalize=False, rescale=False),
    pruning="magnitude_outliers",
    consensus="sum",
    deterministic=True,
    reference="https://arxiv.org/abs/2312.06795",
))
