"""Merge methods by name. Each method module registers its instance when it is imported; this
table says which module holds which method, so `get_method` imports only the one asked for. No
method module imports torch at import time (only inside the functions that compute), so the web
process can look a method up, validate its parameters and plan with it without torch.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from .spec import MergeMethod, MethodParamError

# name -> module of this package that defines and registers it (one file per method).
_MODULES: dict[str, str] = {
    "linear": "linear",
    "slerp": "slerp",
    "nuslerp": "nuslerp",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare_linear": "dare_linear",
    "dare_ties": "dare_ties",
    "breadcrumbs": "breadcrumbs",
    "breadcrumbs_ties": "breadcrumbs_ties",
    "della": "della",
    "della_linear": "della_linear",
    "model_stock": "model_stock",
    "passthrough": "passthrough",
    "graft": "graft",
}

METHOD_NAMES: tuple[str, ...] = tuple(_MODULES)

_METHODS: dict[str, MergeMethod] = {}


class UnknownMethodError(MethodParamError):
    pass


M = TypeVar("M", bound=MergeMethod)


def register(method: M) -> M:
    """Called by a method's module at import. A name must be in the table above, or `get_method`
    could never find it."""
    if method.name not in _MODULES:
        raise ValueError(f"merge method {method.name!r} is not listed in registry._MODULES")
    known = _METHODS.get(method.name)
    if known is not None and known is not method:
        raise ValueError(f"merge method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The method called `name`, importing its module on first use (not torch:
    only `merge` imports it)."""
    module = _MODULES.get(name)
    if module is None:
        raise UnknownMethodError(f"unknown merge method {name!r}; known methods: {', '.join(METHOD_NAMES)}")
    if name not in _METHODS:
        importlib.import_module(f"{__package__}.{module}")
    return _METHODS[name]
