"""DELLA: random pruning whose keep probability grows with an entry's magnitude rank (MAGPRUNE),
rescale, TIES sign election.
"""

from .generalized_task_arithmetic import GeneralizedTaskArithmetic, params_for
from .registry import register

DELLA = register(GeneralizedTaskArithmetic(
    name="della",
    params=params_for("della_magprune", normalize=True, rescale=True),
    pruning="della_magprune",
    consensus="sum",
    deterministic=False,
    reference="https://arxiv.org/abs/2406.11617",
))
