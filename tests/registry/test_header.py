"""read_header: valid files give their tensors and metadata from a few KB read; every defect
raises its HeaderError subclass, naming the file and (where there is one) the tensor."""

import json
import struct

import pytest

from apps.registry.engine.header import (
    MAX_HEADER_BYTES,
    BadOffsetsError,
    BadShapeError,
    DuplicateTensorError,
    HeaderEncodingError,
    HeaderError,
    HeaderTooLargeError,
    TruncatedFileError,
    UnknownDtypeError,
    read_header,
)
from apps.registry.engine.types import TensorInfo

from .builders import save, write_raw


def entry(dtype="F32", shape=(2,), start=0, end=None):
    size = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "F4": 0.5}.get(dtype, 4)
    n = 1
    for d in shape:
        n *= d
    end = start + int(-(-n * size // 1)) if end is None else end
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}


def test_reads_names_shapes_offsets_and_metadata(tmp_path):
    path = save(tmp_path / "m.safetensors", {"b.weight": ((3, 2), "float16"), "a.bias": ((2,), "float32")},
                metadata={"format": "pt"})
    tensors, metadata = read_header(path)
    assert metadata == {"format": "pt"}
    assert set(tensors) == {"a.bias", "b.weight"}
    w = tensors["b.weight"]
    assert isinstance(w, TensorInfo)
    assert (w.dtype, w.shape, w.nbytes, w.numel, w.file) == ("F16", (3, 2), 12, 6, "m.safetensors")
    assert sorted((t.start, t.end) for t in tensors.values()) in ([(0, 8), (8, 20)], [(0, 12), (12, 20)])


def test_empty_header_and_zero_sized_tensors(tmp_path):
    assert read_header(write_raw(tmp_path / "e.safetensors", {})) == ({}, {})
    path = write_raw(tmp_path / "z.safetensors", {"z": entry(shape=(0, 4), start=0, end=0), "a": entry()}, 8)
    tensors, _ = read_header(path)
    assert tensors["z"].nbytes == 0 and tensors["a"].nbytes == 8


def test_sub_byte_dtype_rounds_up(tmp_path):
    header = {"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}
    path = write_raw(tmp_path / "f4.safetensors", header, 2)
    assert read_header(path)[0]["x"].nbytes == 2


def test_exact_alias_is_allowed(tmp_path):
    # A hand-written tied head: lm_head names the embedding's bytes.
    header = {"embed.weight": entry(shape=(4, 2)), "lm_head.weight": entry(shape=(4, 2))}
    tensors, _ = read_header(write_raw(tmp_path / "tied.safetensors", header, 32))
    assert (tensors["embed.weight"].start, tensors["embed.weight"].end) == (0, 32)


def test_reads_only_the_header_of_a_large_file(tmp_path):
    path = tmp_path / "big.safetensors"
    raw = json.dumps({"w": entry(shape=(256, 1024, 1024), start=0)}).encode()
    with open(path, "wb") as f:  # a 1 GiB tensor, sparse: nothing on disk
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + 4 * 256 * 1024 * 1024)
    before = _rchar()
    tensors, _ = read_header(path)
    assert tensors["w"].nbytes == 1 << 30
    assert _rchar() - before < 16 * 1024


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


# --------------------------------------------------------------------------------- defects


def expect(error, path, *needles):
    with pytest.raises(error) as info:
        read_header(path)
    assert isinstance(info.value, HeaderError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    for needle in needles:
        assert needle in str(info.value)
    return info.value


def test_truncated_files(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x05\x00\x00")
    expect(TruncatedFileError, short, "8-byte")
    expect(TruncatedFileError, write_raw(tmp_path / "cut.safetensors", b'{"a":', length=400), "400")


def test_header_too_large_is_refused_before_reading(tmp_path):
    path = write_raw(tmp_path / "huge.safetensors", b"{}", length=MAX_HEADER_BYTES + 1)
    expect(HeaderTooLargeError, path, "100 MB")
    expect(HeaderTooLargeError, write_raw(tmp_path / "max.safetensors", b"{}", length=2**64 - 1))


@pytest.mark.parametrize("raw, needle", [
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"a": ', "JSON"),
    (b"[1, 2]", "not an object"),
    (b'"text"', "not an object"),
    (b"", "JSON"),
    (b"[" * 100_000, "JSON"),
])
def test_header_encoding(tmp_path, raw, needle):
    expect(HeaderEncodingError, write_raw(tmp_path / "enc.safetensors", raw), needle)


def test_entry_and_metadata_shapes(tmp_path):
    expect(HeaderEncodingError, write_raw(tmp_path / "e1.safetensors", {"w.x": [1]}), "'w.x'")
    bad_metadata = {"__metadata__": {"a": 1}}
    expect(HeaderEncodingError, write_raw(tmp_path / "e2.safetensors", bad_metadata), "__metadata__")
    raw = '{"w": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    expect(HeaderEncodingError, write_raw(tmp_path / "e3.safetensors", raw, 4), "'w'", "dtype")


@pytest.mark.parametrize("dtype", ["F128", "float32", "", None, 4])
def test_unknown_dtype_names_the_tensor(tmp_path, dtype):
    header = {"model.embed.weight": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}
    path = write_raw(tmp_path / "dt.safetensors", header, 4)
    expect(UnknownDtypeError, path, "'model.embed.weight'", "dtype")


@pytest.mark.parametrize("shape", [[-1], [2.0], [True], ["2"], "2", None, [[2]], [2**40, 2**40]])
def test_bad_shape_names_the_tensor(tmp_path, shape):
    header = {"layers.0.w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}
    expect(BadShapeError, write_raw(tmp_path / "shape.safetensors", header, 4), "'layers.0.w'")


@pytest.mark.parametrize("offsets, data, needle", [
    ([[0, 8], [4, 12]], 12, "overlap"),
    ([[0, 8], [12, 20]], 20, "gap"),
    ([[4, 12], [12, 20]], 20, "gap"),
    ([[0, 8], [8, 16]], 8, "outside"),
    ([[8, 0], [0, 8]], 16, "after end"),
    ([[0, 8], [8, 12]], 12, "needs 8"),
    ([[0, 8], [8, 16]], 20, "belong to no tensor"),
    ([[0, "8"], [8, 16]], 16, "two non-negative ints"),
    ([[0, -8], [8, 16]], 16, "two non-negative ints"),
    ([[0], [8, 16]], 16, "two non-negative ints"),
])
def test_bad_offsets(tmp_path, offsets, data, needle):
    header = {"first": {"dtype": "F32", "shape": [2], "data_offsets": offsets[0]},
              "second": {"dtype": "F32", "shape": [2], "data_offsets": offsets[1]}}
    err = expect(BadOffsetsError, write_raw(tmp_path / "off.safetensors", header, data), needle)
    assert "'first'" in str(err) or "'second'" in str(err)


def test_trailing_data_without_tensors(tmp_path):
    expect(BadOffsetsError, write_raw(tmp_path / "pad.safetensors", b"{}      ", 64), "64 bytes")


def test_duplicate_tensor_name(tmp_path):
    one = json.dumps(entry(start=0))
    raw = f'{{"layers.1.w": {one}, "layers.1.w": {one}}}'
    expect(DuplicateTensorError, write_raw(tmp_path / "dup.safetensors", raw, 8), "'layers.1.w'")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "absent.safetensors")
