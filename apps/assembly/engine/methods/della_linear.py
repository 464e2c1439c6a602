"""DELLA's MAGPRUNE pruning, then a plain weighted sum (no sign election)."""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

DELLA_LINEAR = register(GeneralizedTaskArithmetic(
    name="della_linear",
    params=params_for("della_magprune", normalize=False, rescale=True),
    pruning="della_magprune",
    consensus=None,
    deterministic=False,
    reference="https://arxiv.org/abs/2406.11617",
))
