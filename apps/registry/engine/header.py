"""Reading a safetensors header, and nothing else: the 8-byte length, then that many bytes of
JSON. The tensor data is never read, so a 10 GB shard costs a few kilobytes.

Every defect raises a `HeaderError` subclass whose message names the file (and the tensor,
where there is one); a scan catches `HeaderError` and carries on with the next model.
A header is checked the way the safetensors library checks it before it maps a file:
known dtypes, shapes of non-negative ints, `data_offsets` that tile the data section from 0
to its last byte with no gap or overlap, each as long as shape x dtype needs. One
leniency: two tensors may name exactly the same `[begin, end]` (an alias, which is how a
hand-written file ties `lm_head.weight` to the embedding); a partial overlap is refused.
Sub-byte dtypes (F4, F6) round their byte size up, where the library refuses a tensor that
does not end on a byte boundary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .types import DTYPE_BYTES, TensorInfo

# The safetensors library refuses headers above 100 MB; a real one is a few hundred KB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Byte counts and shapes past this do not fit the format's u64 offsets.
MAX_U64 = 2**64 - 1
# Bits per element, so sub-byte dtypes (F4, F6) need no float arithmetic.
DTYPE_BITS: dict[str, int] = {dtype: round(size * 8) for dtype, size in DTYPE_BYTES.items()}


class HeaderError(ValueError):
    """Base of every defect the header reader (and the model reader above it) reports."""


class TruncatedFileError(HeaderError):
    """The file ends before its header (or the 8-byte length) does."""


class HeaderTooLargeError(HeaderError):
    """The header length is above 100 MB."""


class HeaderEncodingError(HeaderError):
    """The header is not UTF-8, not JSON, not a JSON object, or an entry is not an object."""


class UnknownDtypeError(HeaderError):
    """A tensor's dtype is missing or not one the safetensors format defines."""


class BadShapeError(HeaderError):
    """A shape is not a list of non-negative ints, or its byte size overflows."""


class BadOffsetsError(HeaderError):
    """`data_offsets` overlap, leave a gap, run outside the file, start after they end, or
    disagree with shape x dtype."""


class DuplicateTensorError(HeaderError):
    """A tensor name appears twice (in one header, or in two shards of a model)."""


class MissingShardError(HeaderError):
    """`model.safetensors.index.json` names a shard file that is not in the folder."""


class BadIndexError(HeaderError):
    """`model.safetensors.index.json` is invalid, or maps a tensor its shard does not hold."""


class ConfigMismatchError(HeaderError):
    """config.json contradicts the weights (vocabulary, hidden size, layer count)."""


class _Pairs(dict):
    """A JSON object that remembers which of its keys appeared more than once."""

    duplicates: list[str]


def _object_pairs(pairs: list[tuple[str, object]]) -> _Pairs:
    obj = _Pairs(pairs)
    obj.duplicates = [] if len(obj) == len(pairs) else _repeated([key for key, _ in pairs])
    return obj


def _repeated(keys: list[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for key in keys:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    return repeated


def _read_exactly(fd: int, size: int, offset: int, path: Path, what: str) -> bytes:
    # pread may return short on huge requests; a short read at EOF means the file is truncated.
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            raise TruncatedFileError(f"{path}: file ends inside the {what} ({got} of {size} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors a safetensors file holds (by name, in file order) and its `__metadata__`.

    Reads the 8-byte length and the header only. Raises a `HeaderError` subclass on any
    defect; OSError (missing file, permissions) passes through.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        if file_size < 8:
            raise TruncatedFileError(f"{path}: {file_size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(_read_exactly(fd, 8, 0, path, "header length"), "little")
        # Check the length against the cap and the file before allocating anything by it.
        if length > MAX_HEADER_BYTES:
            raise HeaderTooLargeError(f"{path}: header length {length} bytes is above the 100 MB limit")
        if length > file_size - 8:
            raise TruncatedFileError(
                f"{path}: header length {length} bytes runs past the end of the {file_size}-byte file")
        raw = _read_exactly(fd, length, 8, path, "header")
    finally:
        os.close(fd)
    header = _parse(raw, path)
    metadata = _metadata(header.pop("__metadata__", None), path)
    tensors = _tensors(header, path, data_size=file_size - 8 - length)
    return tensors, metadata


def _parse(raw: bytes, path: Path) -> _Pairs:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HeaderEncodingError(
            f"{path}: header is not valid UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_object_pairs)
    except RecursionError:
        raise HeaderEncodingError(f"{path}: header JSON is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and ints longer than Python's digit limit
        raise HeaderEncodingError(f"{path}: header is not valid JSON ({err})") from None
    if not isinstance(header, _Pairs):
        raise HeaderEncodingError(f"{path}: header is a JSON {type(header).__name__}, not an object")
    if header.duplicates:
        name = header.duplicates[0]
        raise DuplicateTensorError(f"{path}: tensor {name!r} appears more than once in the header")
    return header


def _metadata(value: object, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise HeaderEncodingError(f"{path}: __metadata__ must map strings to strings")
    return dict(value)


def _tensors(header: dict[str, object], path: Path, data_size: int) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise HeaderEncodingError(f"{path}: tensor {name!r}: entry is not a JSON object")
        if isinstance(entry, _Pairs) and entry.duplicates:
            raise HeaderEncodingError(f"{path}: tensor {name!r}: key {entry.duplicates[0]!r} appears twice")
        dtype = entry.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise UnknownDtypeError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        shape = _shape(entry.get("shape"), name, path)
        start, end = _offsets(entry.get("data_offsets"), name, path)
        need = _byte_size(shape, dtype, name, path)
        if end - start != need:
            raise BadOffsetsError(f"{path}: tensor {name!r}: data_offsets [{start}, {end}] hold "
                                  f"{end - start} bytes, but {dtype} {_short(list(shape))} needs {need}")
        if end > data_size:
            raise BadOffsetsError(f"{path}: tensor {name!r}: data_offsets end {end} is outside the "
                                  f"{data_size}-byte data section")
        tensors[name] = TensorInfo(name=name, dtype=dtype, shape=shape, start=start, end=end, file=path.name)
    _check_tiling(tensors, path, data_size)
    return tensors


def _shape(value: object, name: str, path: Path) -> tuple[int, ...]:
    # bool is an int in Python but never a dimension.
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise BadShapeError(
            f"{path}: tensor {name!r}: shape {_short(value)} is not a list of non-negative ints")
    return tuple(value)


def _offsets(value: object, name: str, path: Path) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(type(v) is int and 0 <= v <= MAX_U64 for v in value)):
        raise BadOffsetsError(f"{path}: tensor {name!r}: data_offsets {_short(value)} "
                              "are not two non-negative ints")
    start, end = value
    if start > end:
        raise BadOffsetsError(f"{path}: tensor {name!r}: data_offsets start {start} is after end {end}")
    return start, end


def _byte_size(shape: tuple[int, ...], dtype: str, name: str, path: Path) -> int:
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > MAX_U64:  # stop early: a long list of huge dims would build a huge int
            raise BadShapeError(f"{path}: tensor {name!r}: shape {_short(list(shape))} overflows 64 bits")
    if numel == 0:
        return 0
    nbytes = (numel * DTYPE_BITS[dtype] + 7) // 8  # sub-byte dtypes round up to whole bytes
    if nbytes > MAX_U64:
        raise BadShapeError(
            f"{path}: tensor {name!r}: {dtype} {_short(list(shape))} overflows 64 bits of bytes")
    return nbytes


def _check_tiling(tensors: dict[str, TensorInfo], path: Path, data_size: int) -> None:
    """The data section is covered from 0 to its end, each byte by one tensor (or by exact aliases)."""
    position = 0
    previous: TensorInfo | None = None
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if previous is not None and info.nbytes and (info.start, info.end) == (previous.start, previous.end):
            continue  # an exact alias of the tensor before it
        if info.start < position:
            other = previous.name if previous else None
            raise BadOffsetsError(f"{path}: tensor {info.name!r}: data_offsets [{info.start}, {info.end}] "
                                  f"overlap {other!r}, which ends at {position}")
        if info.start > position:
            after = f"after {previous.name!r}" if previous else "at the start of the data section"
            raise BadOffsetsError(f"{path}: tensor {info.name!r}: gap of {info.start - position} bytes "
                                  f"before it ({after})")
        position = info.end
        previous = info
    if position != data_size:
        last = f"after tensor {previous.name!r}" if previous else "with no tensors"
        raise BadOffsetsError(f"{path}: {data_size - position} bytes of data {last} belong to no tensor "
                              f"(data section is {data_size} bytes, tensors end at {position})")


def _short(value: object, limit: int = 80) -> str:
    # A hostile header may hold a list of millions of items: show only its start.
    if isinstance(value, list) and len(value) > 8:
        return repr(value[:8])[:-1] + f", ... ({len(value)} items)]"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
