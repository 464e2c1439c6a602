"""Writing a model's tensors as sharded safetensors, one tensor at a time.

The executor knows every output tensor's name, dtype and shape from the plan before it
computes any of them, so each shard's header is written first and the data streams in
after it: memory holds one tensor, never a shard or a model. Files go into a folder the
caller renames into place when everything is written (temp + rename).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from apps.registry.engine.types import DTYPE_BYTES

DEFAULT_SHARD_BYTES = 5 * 1024**3  # what transformers' save_pretrained uses
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class WriterError(RuntimeError):
    pass


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype name: F32, BF16, F16…
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.ceil(math.prod(self.shape) * DTYPE_BYTES[self.dtype])


@dataclass
class _Shard:
    file: str
    tensors: list[OutTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[OutTensor], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[_Shard]:
    """Tensors in order, a new shard when the next one would overflow (a tensor larger
    than the limit gets a shard of its own), named as transformers names them."""
    shards: list[_Shard] = []
    for t in tensors:
        if not shards or (shards[-1].tensors and shards[-1].nbytes + t.nbytes > max_shard_bytes):
            shards.append(_Shard(file=""))
        shards[-1].tensors.append(t)
    n = len(shards)
    for i, shard in enumerate(shards, 1):
        shard.file = SINGLE_FILE if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
    return shards


def _header(shard: _Shard, metadata: dict[str, str]) -> bytes:
    entries: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in shard.tensors:
        entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                           "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """`write(name, data)` each tensor in plan order; `close()` checks that all came and
    writes the index. `data` is the tensor's raw little-endian bytes (a memoryview or
    bytes-like object)."""

    def __init__(self, folder: Path, tensors: list[OutTensor], *,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise WriterError(f"tensor {dup!r} is written twice")
        self.shards = plan_shards(tensors, max_shard_bytes)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._order = [(si, t) for si, s in enumerate(self.shards) for t in s.tensors]
        self._next = 0
        self._fh = None
        self._shard_index = -1
        self.bytes_written = 0

    def _open(self, index: int) -> None:
        if self._fh is not None:
            self._finish_file()
        shard = self.shards[index]
        self._fh = open(self.folder / shard.file, "wb")  # noqa: SIM115 - closed in _finish_file
        self._fh.write(_header(shard, self.metadata))
        self._shard_index = index

    def _finish_file(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None

    def write(self, name: str, data) -> None:
        if self._next >= len(self._order):
            raise WriterError(f"tensor {name!r} is not in the plan, or comes after the last one")
        shard_index, expected = self._order[self._next]
        if name != expected.name:
            raise WriterError(f"expected tensor {expected.name!r} next, got {name!r}")
        view = memoryview(data).cast("B")
        if view.nbytes != expected.nbytes:
            raise WriterError(f"tensor {name!r}: {view.nbytes} bytes, the plan says {expected.nbytes} "
                              f"({expected.dtype} {list(expected.shape)})")
        if shard_index != self._shard_index:
            self._open(shard_index)
        self._fh.write(view)
        self.bytes_written += view.nbytes
        self._next += 1

    def close(self) -> list[str]:
        """Finish; returns the files written. Raises if a planned tensor never came."""
        if self._next != len(self._order):
            missing = self._order[self._next][1].name
            raise WriterError(f"{len(self._order) - self._next} tensors never written, first {missing!r}")
        if self._fh is not None:
            self._finish_file()
        files = [s.file for s in self.shards]
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                     "weight_map": {t.name: s.file for s in self.shards for t in s.tensors}}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
            files.append(INDEX_FILE)
        return files

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
