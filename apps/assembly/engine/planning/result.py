"""What the planner produces: the Plan, its output and source tensors, the tensors dropped,
the models it read and the estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.registry.engine.types import DTYPE_BYTES

from ..recipe import Recipe


def count_elements(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def byte_size(numel: int, dtype: str) -> int:
    return int(-(-numel * DTYPE_BYTES.get(dtype, 4) // 1))


@dataclass
class SourceTensor:
    model: str  # the reference as written in the recipe
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    layer: int | None = None  # the source layer, for block tensors
    role: str = "model"  # model | base | donor
    params: dict[str, Any] = field(default_factory=dict)  # per-model parameters, defaults filled in
    note: str | None = None

    def to_json(self) -> dict:
        return {"model": self.model, "tensor": self.tensor, "shape": list(self.shape), "dtype": self.dtype,
                "layer": self.layer, "role": self.role, "params": self.params, "note": self.note}


@dataclass
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    method: str
    sources: list[SourceTensor]
    params: dict[str, Any] = field(default_factory=dict)  # method-wide parameters, defaults filled in
    group: str = "layer"  # pre | layer | post (outside the blocks) | graft
    layer: int | None = None  # the output layer, for block tensors
    slice: int | None = None
    t: float = 0.0  # relative position in its slice, which gradients are evaluated at
    embedding: bool = False  # rows follow the vocabulary (token embedding, LM head)
    note: str | None = None

    @property
    def numel(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def nbytes(self) -> int:
        return byte_size(self.numel, self.dtype)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.nbytes,
                "method": self.method, "params": self.params, "group": self.group, "layer": self.layer,
                "slice": self.slice, "t": self.t, "embedding": self.embedding, "note": self.note,
                "sources": [s.to_json() for s in self.sources]}


@dataclass
class DroppedTensor:
    model: str
    tensor: str
    reason: str


@dataclass
class ModelInput:
    """One model the recipe names, as the plan found it."""

    ref: str
    path: Path
    roles: list[str]  # base | source | donor | tokenizer
    tensors: int
    bytes: int
    layers: int
    stack: str | None
    vocab: dict
    tied: bool | None
    adapter: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ref": self.ref, "path": str(self.path), "roles": self.roles, "tensors": self.tensors,
                "bytes": self.bytes, "layers": self.layers, "stack": self.stack, "vocab": self.vocab,
                "tied": self.tied, "adapter": self.adapter, "warnings": self.warnings}


@dataclass
class Estimate:
    read_bytes: int
    output_bytes: int
    disk_bytes: int
    peak_memory_bytes: int
    seconds: float
    largest_tensor: str | None
    assumptions: dict[str, Any]
    # Validating the result against its parents afterwards, one model at a time, each in
    # its stored dtype: the largest single model's need, and the time for all of them.
    validation_peak_memory_bytes: int = 0
    validation_seconds: float = 0.0
    validation_models: dict[str, int] = field(default_factory=dict)  # label -> bytes to evaluate it

    def to_json(self) -> dict:
        return {"read_bytes": self.read_bytes, "output_bytes": self.output_bytes,
                "disk_bytes": self.disk_bytes, "peak_memory_bytes": self.peak_memory_bytes,
                "seconds": round(self.seconds, 3),
                "largest_tensor": self.largest_tensor, "assumptions": self.assumptions,
                "validation_peak_memory_bytes": self.validation_peak_memory_bytes,
                "validation_seconds": round(self.validation_seconds, 3),
                "validation_models": self.validation_models}


@dataclass
class Plan:
    recipe: Recipe
    method: str
    deterministic: bool
    base_model: str | None
    models: list[ModelInput]
    outputs: list[OutputTensor]
    dropped: list[DroppedTensor]
    layer_map: list[dict]
    config: dict
    tokenizer: dict
    vocab: dict
    grafts: list[dict]
    estimate: Estimate
    warnings: list[str]

    def output(self, name: str) -> OutputTensor:
        return next(o for o in self.outputs if o.name == name)

    def to_json(self) -> dict:
        """Plain JSON for the UI panel and `--dry-run --json`."""
        used = sum(len(o.sources) for o in self.outputs)
        inputs = sum(m.tensors for m in self.models if set(m.roles) - {"tokenizer"})
        return {
            "method": self.method,
            "deterministic": self.deterministic,
            "random_seed": self.recipe.random_seed,
            "base_model": self.base_model,
            "models": [m.to_json() for m in self.models],
            "layers": {"output": sum(1 for _ in self.layer_map), "map": self.layer_map},
            "outputs": [o.to_json() for o in self.outputs],
            "dropped": [{"model": d.model, "tensor": d.tensor, "reason": d.reason} for d in self.dropped],
            "accounting": {"input_tensors": inputs, "uses": used, "dropped": len(self.dropped),
                           "output_tensors": len(self.outputs)},
            "config": self.config,
            "tokenizer": self.tokenizer,
            "vocab": self.vocab,
            "grafts": self.grafts,
            "validation": self.recipe.validation.model_dump(mode="json") if self.recipe.validation else None,
            "estimate": self.estimate.to_json(),
            "warnings": self.warnings,
        }

