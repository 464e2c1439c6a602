"""Merge methods of the assembly engine: mergekit 0.1.5's per-tensor definitions, plus graft.

Importing this package stays light, and so does `get_method(name)`: a method module imports
torch only inside the functions that compute, so its parameter table and checks (what the
header-only planner uses) come without it.
"""

from .registry import METHOD_NAMES, UnknownMethodError, get_method
from .spec import MergeMethod, MethodInputError, MethodParamError, derive_seed, tensor_generator

__all__ = [
    "METHOD_NAMES",
    "MergeMethod",
    "MethodInputError",
    "MethodParamError",
    "UnknownMethodError",
    "derive_seed",
    "get_method",
    "tensor_generator",
]
