"""Task arithmetic: base + lambda * sum of weighted task vectors (model - base), no pruning."""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

TASK_ARITHMETIC = register(GeneralizedTaskArithmetic(
    name="task_arithmetic",
    params=params_for(None, normalize=False, rescale=False),
    pruning=None,
    consensus=None,
    deterministic=True,
    reference="https://arxiv.org/abs/2212.04089",
))
