"""Fuzzing GGUF header reading (`gguf_header`, `gguf_report`): a valid GGUF written with the
`gguf` package's own writer, then bytes flipped, fields overwritten with huge or negative
counts and lengths, and the file cut short; and GGUF headers encoded here from random
key/value trees (every value type, nested arrays, lying counts). The only exception allowed
out is GGUFError naming the file; every answer comes within a second, and facts that are
returned are plain JSON.

Budget: 2,800 derandomized cases in three tests (times AUDOBON_FUZZ_EXAMPLES, see
tests/reliability/conftest.py).
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from apps.registry.engine.gguf import GGUFError, gguf_header, gguf_report

from .conftest import fuzz

WEIRD = [0, 1, 2, 3, 8, 9, 13, 255, 2**16, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
         2**53, 2**63 - 1, 2**63, 2**64 - 1]
# GGUF value types: 0-7 and 10-12 fixed size, 8 string, 9 array.
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}
SECONDS = 1.0


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-fuzz")


@pytest.fixture(scope="module")
def valid_gguf(fuzz_dir) -> tuple[bytes, int]:
    """A small but complete GGUF from gguf's writer (strings, arrays, floats, Q8_0 and F32
    tensors), and where its tensor data starts."""
    import gguf
    import numpy as np

    path = fuzz_dir / "valid.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("fuzz llama")
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_license("mit")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "</s>", "a", "b", "é", "Ġthe"])
    writer.add_token_types([3, 3, 1, 1, 1, 1])
    writer.add_bool("fuzz.flag", True)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    q8 = gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor("token_embd.weight", np.ones((6, 32), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(np.ones((2, 32), np.float32), q8),
                      raw_dtype=q8)
    writer.add_tensor("output_norm.weight", np.ones((32,), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    facts = gguf_header(path)
    assert facts["tensors"] == 3 and facts["tokenizer"]["tokens"] == 6
    return data, gguf.GGUFReader(str(path)).data_offset


def check(path: Path) -> dict | None:
    """gguf_header answers within a second with facts or GGUFError naming the file; the same
    for gguf_report."""
    started = time.monotonic()
    try:
        facts = gguf_header(path)
    except GGUFError as err:
        assert path.name in str(err), str(err)
        event("refused: " + str(err).removeprefix(f"{path}: ").split(" ")[0])
        facts = None
    assert time.monotonic() - started < SECONDS
    if facts is None:
        return None
    event("read")
    json.dumps(facts)  # stored as JSON: no bytes, no enums
    assert 0 <= facts["tensor_bytes"] <= facts["bytes"] == path.stat().st_size
    assert facts["tensors"] == sum(facts["quantization"].values())
    report = gguf_report(path)
    assert report["format"] == "gguf" and report["gguf"] == facts
    return facts


# --- mutations of a valid file ------------------------------------------------------------------

@fuzz(1500)
@given(seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 4), truncate=st.booleans())
def test_fuzz_byte_mutations_of_a_valid_gguf(fuzz_dir, valid_gguf, seed, edits, truncate):
    """Bytes of the header overwritten (flips, 4- and 8-byte little-endian weird numbers where
    counts, lengths, types and offsets sit), then maybe cut short anywhere."""
    data, header_end = valid_gguf
    rng = random.Random(seed)
    body = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(4, header_end)
        kind = rng.randrange(4)
        if kind == 0:
            body[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            body[at:at + 8] = struct.pack("<Q", rng.choice(WEIRD))
        elif kind == 2:
            body[at:at + 4] = struct.pack("<I", rng.choice(WEIRD) & 0xFFFFFFFF)
        else:
            body[at:at + rng.randint(1, 4)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
    if truncate:
        del body[rng.randint(0, len(body)):]
    path = fuzz_dir / "mutated.gguf"
    path.write_bytes(bytes(body))
    check(path)


# --- headers encoded from random trees ---------------------------------------------------------

class Encoder:
    """GGUF v3 bytes, remembering where each count and length field sits so that one can be
    made to lie afterwards."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.fields: list[tuple[int, str]] = []  # (offset, struct format)

    def put(self, fmt: str, value, *, field: bool = False) -> None:
        if field:
            self.fields.append((len(self.out), fmt))
        self.out += struct.pack(fmt, value)

    def string(self, raw: bytes) -> None:
        self.put("<Q", len(raw), field=True)
        self.out += raw

    def value(self, vtype: int, value) -> None:
        if vtype in SCALAR_FORMATS:
            fmt = SCALAR_FORMATS[vtype]
            size = struct.calcsize(fmt)
            self.out += int(value).to_bytes(16, "little", signed=False)[:size] if fmt not in ("<f", "<d") \
                else struct.pack(fmt, float(value))
        elif vtype == 8:
            self.string(value)
        else:
            item, items = value
            self.put("<I", item, field=True)
            self.put("<Q", len(items), field=True)
            for v in items:
                self.value(item, v)


scalars = st.one_of(
    st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 10, 11]), st.integers(0, 2**64 - 1)),
    st.tuples(st.sampled_from([6, 12]), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.tuples(st.just(8), st.binary(max_size=12)))


def arrays(inner):
    # An array's items all have one type: draw the type, then items of it.
    return st.one_of(
        st.integers(0, 12).filter(lambda t: t not in (6, 8, 9, 12)).flatmap(
            lambda t: st.tuples(st.just(9),
                                st.tuples(st.just(t), st.lists(st.integers(0, 255), max_size=4)))),
        st.tuples(st.just(9), st.tuples(st.just(8), st.lists(st.binary(max_size=6), max_size=4))),
        st.tuples(st.just(9), st.tuples(st.just(9), st.lists(inner.filter(lambda v: v[0] == 9).map(
            lambda v: v[1]), max_size=3))))


values = st.recursive(scalars, arrays, max_leaves=6)
KEYS = [b"general.architecture", b"general.name", b"general.alignment", b"general.file_type",
        b"llama.context_length", b"llama.block_count", b"tokenizer.ggml.tokens", b"tokenizer.chat_template",
        b"general.license", b"", b"\xff\xfe", b"k\x00"]
tensors = st.tuples(st.sampled_from([b"w", b"blk.0.attn_q.weight", b"\xc3", b""]),
                    st.lists(st.sampled_from([0, 1, 2, 32, 2**32, 2**63]), max_size=4),
                    st.sampled_from([0, 1, 2, 8, 12, 30, 39, 41, 99, 2**32 - 1]),
                    st.sampled_from([0, 32, 64, 96, 2**40, 2**64 - 1]))


def encode(version: int, kvs: list, tens: list, padding: int) -> Encoder:
    enc = Encoder()
    enc.out += b"GGUF"
    enc.put("<I", version, field=True)
    enc.put("<Q", len(tens), field=True)
    enc.put("<Q", len(kvs), field=True)
    for key, (vtype, value) in kvs:
        enc.string(key)
        enc.put("<I", vtype, field=True)
        enc.value(vtype, value)
    for name, dims, ttype, offset in tens:
        enc.string(name)
        enc.put("<I", len(dims), field=True)
        for d in dims:
            enc.put("<Q", d, field=True)
        enc.put("<I", ttype, field=True)
        enc.put("<Q", offset, field=True)
    enc.out += b"\0" * padding
    return enc


@fuzz(1000)
@given(version=st.sampled_from([3, 3, 3, 2, 1, 4, 2**32 - 1]),
       kvs=st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=5),
       tens=st.lists(tensors, max_size=3), padding=st.sampled_from([0, 31, 256, 4096]),
       lie=st.one_of(st.none(), st.tuples(st.integers(0, 200), st.sampled_from(WEIRD))))
def test_fuzz_encoded_headers(fuzz_dir, version, kvs, tens, padding, lie):
    """Random headers: every value type, arrays of arrays, strings that are not UTF-8, unknown
    tensor types, dimensions and offsets past the file; one count or length may lie."""
    enc = encode(version, kvs, tens, padding)
    if lie is not None and enc.fields:
        offset, fmt = enc.fields[lie[0] % len(enc.fields)]
        struct.pack_into(fmt, enc.out, offset, lie[1] & (0xFFFFFFFF if fmt == "<I" else 0xFFFFFFFFFFFFFFFF))
    path = fuzz_dir / "encoded.gguf"
    path.write_bytes(bytes(enc.out))
    check(path)


def nested_arrays(depth: int) -> bytes:
    """One key whose value is an array of an array of ... `depth` deep."""
    enc = encode(3, [], [], 0)
    enc.out[16:24] = struct.pack("<Q", 1)
    enc.string(b"deep")
    enc.put("<I", 9)
    for _ in range(depth):
        enc.put("<I", 9)
        enc.put("<Q", 1)
    enc.put("<I", 0)
    enc.put("<Q", 0)
    return bytes(enc.out)


@fuzz(300)
@given(depth=st.one_of(st.integers(0, 20), st.integers(0, 3000)), cut=st.integers(0, 64))
@example(depth=5000, cut=0)  # found: a RecursionError before arrays had a nesting limit
def test_fuzz_nested_arrays(fuzz_dir, depth, cut):
    path = fuzz_dir / "nested.gguf"
    data = nested_arrays(depth)
    path.write_bytes(data[:len(data) - cut])
    facts = check(path)
    if facts is not None:
        assert depth <= 16 and cut == 0


def test_deep_arrays_are_refused_by_name(tmp_path):
    path = tmp_path / "deep.gguf"
    path.write_bytes(nested_arrays(5000))
    with pytest.raises(GGUFError, match=r"deep\.gguf: arrays nested deeper than 16 levels"):
        gguf_header(path)
