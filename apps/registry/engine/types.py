"""The registry's plain data: what a safetensors header says about each tensor, what a
model folder holds, and the components its tensors group into. Shared by the header
reader, the component catalogue, compatibility and diff."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# Bytes per element of every dtype the safetensors format defines.
DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its file's header describes it; `start`/`end` are byte offsets into
    the file's data section (after the 8-byte length and the header)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    file: str  # the shard's file name, relative to the model folder

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class Component:
    """A group of tensors that belong together: an embedding, one block (or its attention,
    MLP or norms), the final norm, the head, a vision tower, a projector."""

    id: str  # "embed", "layers.3", "layers.3.attention", "final_norm", "head", ...
    kind: str  # embedding | block | attention | mlp | norm | head | vision | projector | other
    layer: int | None
    tensors: list[str]
    params: int
    bytes: int
    dtypes: list[str]
    signature: str  # hash of the (name relative to the component, shape, dtype) list
    children: list[Component] = field(default_factory=list)
    prefix: str = ""  # the name prefix `tensors` share ("model.layers.3."); signatures drop it


@dataclass
class ModelFiles:
    """What a model folder holds, read from headers and small JSON files only."""

    root: Path
    config: dict | None
    tensors: dict[str, TensorInfo]
    shards: list[str]
    pickle_files: list[str] = field(default_factory=list)
    adapter_config: dict | None = None
    tokenizer: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    generation_config: dict | None = None
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # each shard's __metadata__
    extra_safetensors: list[str] = field(default_factory=list)  # beside the weights, not read
