"""Fuzzing read_header with a fixed budget (10,500 derandomized examples in four tests):
truncation, length fields past the file or the 100 MB cap, invalid UTF-8 and JSON, unknown
dtypes, negative and overflowing shapes, bad, overlapping and outside offsets, duplicate
names. The only exception allowed out is HeaderError, naming the file; a header that
passes really does tile its data section; memory never grows with the length field.

Hypothesis draws a mutation kind and a seed; the case is built from the seed with plain
`random`, which keeps each example cheap (the budget runs in seconds) and reproducible.
"""

from __future__ import annotations

import json
import random
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.registry.engine.header import MAX_HEADER_BYTES, HeaderError, read_header
from apps.registry.engine.types import DTYPE_BYTES

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEEDS = st.integers(0, 2**32 - 1)

DTYPES = sorted(DTYPE_BYTES)
NAMES = ["w", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "é.ü", "a\u0000b", "x" * 40,
         "\ud800", "", " ", "layers.10.mlp"]
WEIRD_INTS = [-1, -(2**63), 2**31, 2**32 - 1, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 2**70, 10**30]
LENGTHS = [0, 1, 7, MAX_HEADER_BYTES - 1, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 2**31, 2**32, 2**63,
           2**64 - 1]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def nbytes(dtype: str, shape: list[int]) -> int:
    numel = 1
    for d in shape:
        numel *= d
    return (numel * round(DTYPE_BYTES[dtype] * 8) + 7) // 8


def random_text(rng: random.Random, size: int = 6) -> str:
    alphabet = "ab.0_é\u2028\"\\{}[]"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(2**70), 2**70)
    if kind == 3:
        return rng.choice([*WEIRD_INTS, 0, 1, 2, 3])
    if kind == 4:
        return rng.uniform(-1e6, 1e6)
    if kind in (5, 6):
        return random_text(rng)
    if kind == 7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, 4): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def valid_header(rng: random.Random) -> tuple[dict, int]:
    """A header the reader must accept (tensors in shuffled file order), and its data size."""
    names = rng.sample(NAMES[:6], rng.randint(0, 3)) + [random_text(rng) for _ in range(rng.randint(0, 2))]
    names = [n for n in dict.fromkeys(names) if n != "__metadata__"]
    specs = [(n, rng.choice(DTYPES), [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]) for n in names]
    header: dict = {}
    if rng.random() < 0.3:
        header["__metadata__"] = {random_text(rng): random_text(rng) for _ in range(rng.randint(0, 2))}
    position, offsets = 0, {}
    for name, dtype, shape in rng.sample(specs, len(specs)):
        offsets[name] = [position, position + nbytes(dtype, shape)]
        position = offsets[name][1]
    for name, dtype, shape in specs:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets[name]}
    return header, position


def file_bytes(header_bytes: bytes, data: int, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header_bytes) if length is None else length) + header_bytes + b"\0" * data


def check(path: Path) -> None:
    """read_header either raises HeaderError naming the file or returns a sound header."""
    try:
        tensors, metadata = read_header(path)
    except HeaderError as err:
        assert path.name in str(err)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    data_size = path.stat().st_size - 8 - length
    position = 0
    for start, end in sorted({(t.start, t.end) for t in tensors.values() if t.nbytes}):
        assert start == position
        position = end
    assert position == data_size
    for t in tensors.values():
        assert t.dtype in DTYPE_BYTES and all(type(d) is int and d >= 0 for d in t.shape)
        assert t.nbytes == nbytes(t.dtype, list(t.shape))


STRUCTURED = ["dtype", "shape", "offsets", "metadata", "duplicate", "entry", "data", "valid"]


def structured_case(kind: str, rng: random.Random) -> bytes:
    """A valid header with one thing broken: a dtype, shape, offsets, the metadata, an entry,
    a repeated name or the data size."""
    header, data = valid_header(rng)
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names) if names else None
    if kind == "dtype" and name:
        header[name]["dtype"] = rng.choice([random_text(rng), random_json(rng), rng.choice(DTYPES).lower(),
                                            rng.choice(DTYPES) + " "])
    elif kind == "shape" and name:
        header[name]["shape"] = rng.choice([
            random_json(rng), [rng.choice([*WEIRD_INTS, 0, 1, 3]) for _ in range(rng.randint(0, 4))],
            [rng.randint(0, 2**40) for _ in range(rng.randint(1, 5))], [1.0], [True], [[2]], [-1]])
    elif kind == "offsets" and name:
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice([
            random_json(rng), [rng.randint(-3, data + 3), rng.randint(-3, data + 3)], [end, start],
            [start + 1, end + 1], [start, end - 1], [0, end], [start, data + 1], [start, 2**64],
            [rng.choice(WEIRD_INTS), rng.choice(WEIRD_INTS)], [start], [start, end, end],
            [start, float(end)]])
    elif kind == "metadata":
        header["__metadata__"] = random_json(rng)
    elif kind == "entry" and name:
        header[name] = random_json(rng)
    elif kind == "data":
        data = max(0, data + rng.randint(-4, 4))
    raw = json.dumps(header).encode()
    if kind == "duplicate" and name:
        # json.dumps cannot write a repeated key: splice one entry in once more.
        raw = raw[:-1] + b", " + json.dumps({name: header[name]}).encode()[1:]
    return file_bytes(raw, data)


@settings(FUZZ, max_examples=4000)
@given(kind=st.sampled_from(STRUCTURED), seed=SEEDS)
def test_fuzz_structured_mutations(fuzz_dir, kind, seed):
    path = fuzz_dir / "structured.safetensors"
    path.write_bytes(structured_case(kind, random.Random(seed)))
    check(path)


@settings(FUZZ, max_examples=3000)
@given(seed=SEEDS, edits=st.integers(0, 3), truncate=st.booleans())
def test_fuzz_byte_mutations(fuzz_dir, seed, edits, truncate):
    """Bytes of a valid file overwritten (often making invalid UTF-8 or JSON, or a wild
    length field), then maybe cut short."""
    rng = random.Random(seed)
    header, data = valid_header(rng)
    body = bytearray(file_bytes(json.dumps(header).encode(), data))
    for _ in range(edits):
        at = rng.randrange(len(body))
        body[at:at + rng.randint(1, 3)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 3)))
    if truncate:
        del body[rng.randint(0, len(body)):]
    path = fuzz_dir / "bytes.safetensors"
    path.write_bytes(bytes(body))
    check(path)


@settings(FUZZ, max_examples=2000)
@given(header=st.one_of(
    st.binary(max_size=48),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
                 lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                 max_leaves=8).map(lambda v: json.dumps(v).encode())),
    data=st.integers(0, 64))
def test_fuzz_arbitrary_headers(fuzz_dir, header, data):
    path = fuzz_dir / "arbitrary.safetensors"
    path.write_bytes(file_bytes(header, data))
    check(path)


@settings(FUZZ, max_examples=1500)
@given(seed=SEEDS, shorten=st.integers(0, 16),
       length=st.one_of(st.sampled_from(LENGTHS), st.integers(0, 2**64 - 1), st.integers(0, 4096)))
def test_fuzz_length_field_memory_is_bounded(fuzz_dir, seed, length, shorten):
    """Whatever the length field says, memory stays near the file's size: a length is
    checked against the 100 MB cap and the file before anything is allocated by it."""
    header, data = valid_header(random.Random(seed))
    body = file_bytes(json.dumps(header).encode(), data, length)
    path = fuzz_dir / "length.safetensors"
    path.write_bytes(body[:max(0, len(body) - shorten)])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        check(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 + 20 * len(body)
