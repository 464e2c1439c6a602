"""Writing a model's tensors as sharded safetensors, one tensor at a time.

The executor knows every output tensor's name, dtype and shape from the plan before it
computes any of them, so each shard's header and every tensor's place are fixed up front and
each tensor is written to its place when it is ready, in whatever order they come: memory
holds the tensors being computed, never a shard or a model. Files go into a folder the
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
    """`write(name, data)` each planned tensor once, in any order; `close()` checks that all
    came, syncs the files and writes the index. `data` is the tensor's raw little-endian bytes
    (a memoryview or bytes-like object)."""

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
        self._headers = [_header(shard, self.metadata) for shard in self.shards]
        # name -> (shard, absolute offset in its file, the tensor)
        self._places: dict[str, tuple[int, int, OutTensor]] = {}
        for index, (shard, header) in enumerate(zip(self.shards, self._headers, strict=True)):
            offset = len(header)
            for t in shard.tensors:
                self._places[t.name] = (index, offset, t)
                offset += t.nbytes
        self._written: set[str] = set()
        self._fds: dict[int, int] = {}
        self.bytes_written = 0

    def _fd(self, index: int) -> int:
        fd = self._fds.get(index)
        if fd is None:
            fd = os.open(self.folder / self.shards[index].file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds[index] = fd
            _write_all(fd, memoryview(self._headers[index]), 0)
            # The full size at once: the tensors fill it in any order.
            os.ftruncate(fd, len(self._headers[index]) + self.shards[index].nbytes)
        return fd

    def write(self, name: str, data) -> None:
        place = self._places.get(name)
        if place is None:
            raise WriterError(f"tensor {name!r} is not in the plan")
        if name in self._written:
            raise WriterError(f"tensor {name!r} is written twice")
        index, offset, expected = place
        view = memoryview(data).cast("B")
        if view.nbytes != expected.nbytes:
            raise WriterError(f"tensor {name!r}: {view.nbytes} bytes, the plan says {expected.nbytes} "
                              f"({expected.dtype} {list(expected.shape)})")
        _write_all(self._fd(index), view, offset)
        self._written.add(name)
        self.bytes_written += view.nbytes

    def close(self) -> list[str]:
        """Finish; returns the files written. Raises if a planned tensor never came."""
        missing = [t.name for s in self.shards for t in s.tensors if t.name not in self._written]
        if missing:
            raise WriterError(f"{len(missing)} tensors never written, first {missing[0]!r}")
        for index in range(len(self.shards)):
            fd = self._fd(index)  # a shard of empty tensors only is still a file
            os.fsync(fd)
            os.close(fd)
            del self._fds[index]
        files = [s.file for s in self.shards]
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                     "weight_map": {t.name: s.file for s in self.shards for t in s.tensors}}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
            files.append(INDEX_FILE)
        return files

    def abort(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
