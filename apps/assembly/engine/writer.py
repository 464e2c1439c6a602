"""Writing a model's tensors as sharded safetensors, one tensor at a time.

The executor knows every output tensor's name, dtype and shape from the plan before it
computes any of them, so each shard's header and every tensor's place are fixed up front and
each tensor is written to its place when it is ready, in whatever order they come: memory
holds the tensors being computed, never a shard or a model. Files go into a folder the
caller renames into place when everything is written (temp + rename).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import math
import os
import queue
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from apps.registry.engine.types import DTYPE_BYTES

DEFAULT_SHARD_BYTES = 5 * 1024**3  # what transformers' save_pretrained uses
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HASH_CHUNK = 8 * 1024 * 1024
# Tensors held at most to hash a shard in file order (see _ShardHasher).
HASH_HELD_BYTES = 256 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range, do not wait for it


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


class _ShardHasher:
    """The sha256 of each shard, taken on a thread of its own from the tensors' bytes as they
    are written: a shard's header first, then each tensor once those before it in the file have
    come. A tensor that comes early is held until then, up to `limit` bytes held in all; past
    that, that shard is left to `close`, which reads it back from the page cache."""

    def __init__(self, headers: list[bytes], counts: list[int], limit: int):
        self.shas = [hashlib.sha256(h) for h in headers]
        self.next = [0] * len(headers)
        self.pending: list[dict[int, memoryview]] = [{} for _ in headers]
        self.given_up = [False] * len(headers)
        self.counts = counts
        self.limit, self.held = limit, 0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="shard-hash", daemon=True)
        self.thread.start()

    def add(self, shard: int, position: int, view: memoryview) -> None:
        self.queue.put((shard, position, view))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            try:
                self._take(*item)
            except BaseException as exc:
                self.error = exc

    def _take(self, shard: int, position: int, view: memoryview) -> None:
        if self.given_up[shard]:
            return
        pending = self.pending[shard]
        if position != self.next[shard]:
            if self.held + view.nbytes > self.limit:
                self.given_up[shard] = True
                self.held -= sum(v.nbytes for v in pending.values())
                pending.clear()
            else:
                pending[position] = view
                self.held += view.nbytes
            return
        sha = self.shas[shard]
        sha.update(view)
        self.next[shard] += 1
        while self.next[shard] in pending:
            held = pending.pop(self.next[shard])
            self.held -= held.nbytes
            sha.update(held)
            self.next[shard] += 1

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def digests(self) -> list[str | None]:
        """Each shard's sha256, or None where it must be read back. Call after `stop`."""
        if self.error is not None:
            raise self.error
        return [None if gave_up or done != count else sha.hexdigest()
                for sha, done, count, gave_up in zip(self.shas, self.next, self.counts, self.given_up,
                                                     strict=True)]


class ShardedWriter:
    """`write(name, data)` each planned tensor once, in any order; `close()` checks that all
    came, syncs the files and writes the index. `data` is the tensor's raw little-endian bytes
    (a memoryview or bytes-like object), which must not change afterwards: the writer may hold
    it a little while to hash it in file order.

    The disk writes start as each tensor is written (not all at once in `close`), and each
    shard is hashed as its bytes come (see `_ShardHasher`): `hashes` maps each shard file to
    its sha256 once closed, so whoever stores the folder need not read it again. With `mirror`,
    `close` copies the files into that folder too, while the disk finishes (a copy for the
    user, not synced; the caller moves it into place)."""

    def __init__(self, folder: Path, tensors: list[OutTensor], *,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: dict[str, str] | None = None,
                 mirror: Path | None = None, hash_held_bytes: int = HASH_HELD_BYTES):
        self.folder = Path(folder)
        self.mirror = Path(mirror) if mirror is not None else None
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise WriterError(f"tensor {dup!r} is written twice")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.mirror is not None:
            self.mirror.mkdir(parents=True, exist_ok=True)
        self.shards = plan_shards(tensors, max_shard_bytes)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._headers = [_header(shard, self.metadata) for shard in self.shards]
        # name -> (shard, position in it, absolute offset in its file, the tensor)
        self._places: dict[str, tuple[int, int, int, OutTensor]] = {}
        for index, (shard, header) in enumerate(zip(self.shards, self._headers, strict=True)):
            offset = len(header)
            for position, t in enumerate(shard.tensors):
                self._places[t.name] = (index, position, offset, t)
                offset += t.nbytes
        self._written: set[str] = set()
        self._fds: dict[int, int] = {}
        self.bytes_written = 0
        self.hashes: dict[str, str] = {}
        self._hasher = _ShardHasher(self._headers, [len(s.tensors) for s in self.shards], hash_held_bytes)

    def _fd(self, index: int) -> int:
        fd = self._fds.get(index)
        if fd is None:
            fd = self._fds[index] = self._open(self.folder, index)
        return fd

    def _open(self, folder: Path, index: int) -> int:
        fd = os.open(folder / self.shards[index].file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, memoryview(self._headers[index]), 0)
            # The full size at once: the tensors fill it in any order.
            os.ftruncate(fd, len(self._headers[index]) + self.shards[index].nbytes)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, name: str, data) -> None:
        place = self._places.get(name)
        if place is None:
            raise WriterError(f"tensor {name!r} is not in the plan")
        if name in self._written:
            raise WriterError(f"tensor {name!r} is written twice")
        index, position, offset, expected = place
        view = memoryview(data).cast("B")
        if view.nbytes != expected.nbytes:
            raise WriterError(f"tensor {name!r}: {view.nbytes} bytes, the plan says {expected.nbytes} "
                              f"({expected.dtype} {list(expected.shape)})")
        fd = self._fd(index)
        _write_all(fd, view, offset)
        _start_writeback(fd, offset, view.nbytes)
        self._hasher.add(index, position, view)
        self._written.add(name)
        self.bytes_written += view.nbytes

    def close(self) -> list[str]:
        """Finish; returns the files written. Raises if a planned tensor never came."""
        missing = [t.name for s in self.shards for t in s.tensors if t.name not in self._written]
        if missing:
            raise WriterError(f"{len(missing)} tensors never written, first {missing[0]!r}")
        for index in range(len(self.shards)):
            self._fd(index)  # a shard of empty tensors only is still a file
        errors: list[BaseException] = []

        def sync() -> None:
            try:
                for fd in self._fds.values():
                    os.fsync(fd)
            except BaseException as exc:
                errors.append(exc)

        def mirror() -> None:
            try:
                for index, shard in enumerate(self.shards):
                    _copy_file(self._fds[index], self.mirror / shard.file,
                               len(self._headers[index]) + shard.nbytes)
            except BaseException as exc:
                errors.append(exc)

        # While the disk finishes the shards' writes (the CPU mostly idle), the hashes are
        # finished (or, for a shard whose tensors came too far out of order, read back) and
        # the mirror is copied from the page cache.
        threads = [threading.Thread(target=sync, name="shard-fsync")]
        if self.mirror is not None:
            threads.append(threading.Thread(target=mirror, name="shard-mirror"))
        for thread in threads:
            thread.start()
        try:
            self._hasher.stop()
            digests = self._hasher.digests()
            for index, (shard, header, digest) in enumerate(zip(self.shards, self._headers, digests,
                                                                strict=True)):
                self.hashes[shard.file] = digest or _sha256_of(self._fds[index], len(header) + shard.nbytes)
        finally:
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        self._close_files()
        files = [s.file for s in self.shards]
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                     "weight_map": {t.name: s.file for s in self.shards for t in s.tensors}}
            text = json.dumps(index, indent=2, sort_keys=True)
            for folder in (self.folder, self.mirror):
                if folder is not None:
                    (folder / INDEX_FILE).write_text(text)
            files.append(INDEX_FILE)
        return files

    def abort(self) -> None:
        self._hasher.stop()
        self._close_files()

    def _close_files(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_file(src_fd: int, dest: Path, size: int) -> None:
    """The first `size` bytes of `src_fd` into the new file `dest`, inside the kernel
    (copy_file_range: no pass through Python, and a reflink where the filesystem makes one)."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        offset = 0
        in_kernel = hasattr(os, "copy_file_range")
        while offset < size:
            if in_kernel:
                try:
                    n = os.copy_file_range(src_fd, out, size - offset, offset, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    in_kernel = False  # another filesystem or an older kernel: through a buffer
                    continue
            else:
                chunk = os.pread(src_fd, min(HASH_CHUNK, size - offset), offset)
                n = len(chunk)
                if n:
                    _write_all(out, memoryview(chunk), offset)
            if not n:
                raise WriterError(f"{dest.name}: the source ended at {offset} bytes of {size}")
            offset += n
    finally:
        os.close(out)


def _sha256_of(fd: int, size: int) -> str:
    """The sha256 of the file's first `size` bytes, read with pread (hashlib lets go of the
    GIL on each large piece)."""
    sha = hashlib.sha256()
    buf = bytearray(min(HASH_CHUNK, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[:min(len(buf), size - offset)]], offset)
        if not n:
            raise WriterError(f"file ended at {offset} bytes, {size} were written")
        sha.update(view[:n])
        offset += n
    return sha.hexdigest()


@functools.cache
def _sync_file_range():
    """Linux's sync_file_range, or None elsewhere."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range to the disk now, so that `close`'s fsync finds
    little left to wait for. Only a hint: where it is missing or fails, fsync does it all."""
    func = _sync_file_range()
    if func is not None and nbytes:
        func(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)
