"""Reading tensors straight from safetensors shards by their header offsets: a tensor (or a
chunk of one) at a time, never a whole file."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .types import TensorInfo

NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1",
}


class ShardFiles:
    """Open shard files, each with the offset of its data section (8 + header length)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, tuple[BinaryIO, int]] = {}

    def get(self, shard: str) -> tuple[BinaryIO, int]:
        if shard not in self.files:
            f = open(self.root / shard, "rb")  # noqa: SIM115 - closed in close()
            (n,) = struct.unpack("<Q", f.read(8))
            self.files[shard] = (f, 8 + n)
        return self.files[shard]

    def read_raw(self, info: TensorInfo) -> np.ndarray:
        """A tensor's bytes exactly as stored (any dtype), read once into a writable uint8
        array (left unfilled before the read: no pass over the memory but the read's own)."""
        f, data = self.get(info.file)
        f.seek(data + info.start)
        raw = np.empty(info.nbytes, dtype=np.uint8)
        if f.readinto(raw) != info.nbytes:
            raise ValueError(f"{info.file}: {info.name} is truncated")
        return raw

    def __enter__(self) -> ShardFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()
        self.files.clear()


def read_chunk(shards: ShardFiles, info: TensorInfo, first: int, count: int) -> np.ndarray:
    """Elements [first, first + count) of a tensor as float64, read straight from the file."""
    f, data = shards.get(info.file)
    np_dtype = np.dtype(NUMPY_DTYPES[info.dtype])
    f.seek(data + info.start + first * np_dtype.itemsize)
    raw = np.fromfile(f, dtype=np_dtype, count=count)
    if raw.size != count:
        raise ValueError(f"{info.file}: {info.name} is truncated")
    if info.dtype == "BF16":
        # bfloat16 is the top half of a float32: shift it back into place.
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


