"""The state the planning stages share and fill in as they go, and small helpers they all use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.assembly.engine.methods.spec import MethodSpec, Param

from ..recipe import Recipe
from .result import OutputTensor

if TYPE_CHECKING:
    from .inputs import LoadedModel
    from .layers import PlanSlice

Resolver = Callable[[str], Path]


@dataclass
class PlanContext:
    """One planning run: the recipe, its method, and what the stages have found so far."""

    recipe: Recipe
    resolve: Resolver
    method: MethodSpec
    params: dict[str, Param] = field(init=False)  # the method's parameters by name
    models: dict[str, LoadedModel] = field(default_factory=dict)  # by reference, in recipe order
    outputs: list[OutputTensor] = field(default_factory=list)
    drops: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, tensor) -> reason
    warnings: list[str] = field(default_factory=list)
    layer_map: list[dict] = field(default_factory=list)
    grafts: list[dict] = field(default_factory=list)
    slices: list[PlanSlice] = field(default_factory=list)
    # Set by the layers stage: the model the output's names, config and tokenizer follow.
    template: LoadedModel = field(init=False, repr=False)
    out_tied: bool = field(init=False, repr=False)  # whether the output ties its head to the embedding
    out_layers: int = field(init=False, repr=False)  # the output's block count
    used: set[tuple[str, str]] = field(default_factory=set)  # (model, tensor) read by some output

    def __post_init__(self) -> None:
        self.params = {p.name: p for p in self.method.params}

    @property
    def base_policy(self) -> str:
        return self.method.base_policy

    def drop(self, model: str, tensor: str, reason: str) -> None:
        """Record why an input tensor is not used; the first reason given stands."""
        self.drops.setdefault((model, tensor), reason)

    def merged_models(self) -> list[tuple[str, LoadedModel]]:
        """The models whose tensors go into the output (sources and the base)."""
        return [(k, m) for k, m in self.models.items() if {"source", "base"} & set(m.roles)]


def natural(name: str) -> tuple:
    """A sort key for dotted tensor names that puts layer 2 before layer 10."""
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in name.split("."))


def config_value(config: dict | None, key: str) -> Any:
    """`key` of a config.json, or of its text_config (multimodal models)."""
    for source in (config or {}, (config or {}).get("text_config") or {}):
        if isinstance(source, dict) and key in source:
            return source[key]
    return None
