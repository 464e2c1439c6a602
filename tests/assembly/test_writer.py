"""The streamed, sharded safetensors writer: files that safetensors and transformers read."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from apps.assembly.engine.writer import OutTensor, ShardedWriter, WriterError, plan_shards
from apps.registry.engine.header import read_header


def _tensors():
    rng = np.random.default_rng(0)
    return {f"layer.{i}.weight": rng.standard_normal((8, 4 + i)).astype(np.float32) for i in range(5)}


def _out(arrays):
    return [OutTensor(n, "F32", a.shape) for n, a in arrays.items()]


def test_single_file_round_trip(tmp_path):
    arrays = _tensors()
    w = ShardedWriter(tmp_path / "m", _out(arrays))
    for name, a in arrays.items():
        w.write(name, a.tobytes())
    assert w.close() == ["model.safetensors"]
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        for name, a in arrays.items():
            np.testing.assert_array_equal(f.get_tensor(name), a)
    tensors, _ = read_header(tmp_path / "m" / "model.safetensors")  # our own strict reader agrees
    assert set(tensors) == set(arrays)


def test_sharded_output_has_an_index_and_loads(tmp_path):
    arrays = _tensors()
    limit = arrays["layer.0.weight"].nbytes * 2  # two small tensors per shard at most
    w = ShardedWriter(tmp_path / "m", _out(arrays), max_shard_bytes=limit)
    for name, a in arrays.items():
        w.write(name, a)
    files = w.close()
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 3 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(arrays)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())
    for name, a in arrays.items():
        with safe_open(str(tmp_path / "m" / index["weight_map"][name]), framework="numpy") as f:
            np.testing.assert_array_equal(f.get_tensor(name), a)


def test_tensors_may_come_in_any_order_into_any_shard(tmp_path):
    arrays = _tensors()
    limit = arrays["layer.0.weight"].nbytes * 2
    w = ShardedWriter(tmp_path / "m", _out(arrays), max_shard_bytes=limit)
    for name in reversed(list(arrays)):  # the last shard's tensors first
        w.write(name, arrays[name])
    w.close()
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    for name, a in arrays.items():
        with safe_open(str(tmp_path / "m" / index["weight_map"][name]), framework="numpy") as f:
            np.testing.assert_array_equal(f.get_tensor(name), a)
        read_header(tmp_path / "m" / index["weight_map"][name])  # offsets contiguous, in the file


def test_names_sizes_repeats_and_completeness_are_checked(tmp_path):
    arrays = _tensors()
    w = ShardedWriter(tmp_path / "m", _out(arrays))
    with pytest.raises(WriterError, match=r"tensor 'layer\.9\.weight' is not in the plan"):
        w.write("layer.9.weight", arrays["layer.1.weight"])
    with pytest.raises(WriterError, match="the plan says"):
        w.write("layer.0.weight", arrays["layer.0.weight"][:4])
    w.write("layer.1.weight", arrays["layer.1.weight"])
    with pytest.raises(WriterError, match=r"'layer\.1\.weight' is written twice"):
        w.write("layer.1.weight", arrays["layer.1.weight"])
    with pytest.raises(WriterError, match=r"4 tensors never written, first 'layer\.0\.weight'"):
        w.close()
    w.abort()
    with pytest.raises(WriterError, match="written twice"):
        ShardedWriter(tmp_path / "d", [OutTensor("a", "F32", (1,)), OutTensor("a", "F32", (1,))])


def test_a_tensor_larger_than_the_limit_gets_its_own_shard():
    shards = plan_shards([OutTensor("small", "BF16", (2,)), OutTensor("big", "F32", (100,)),
                          OutTensor("tail", "F32", (1,))], max_shard_bytes=64)
    assert [[t.name for t in s.tensors] for s in shards] == [["small"], ["big"], ["tail"]]


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("order", ["files", "reversed", "shuffled"])
@pytest.mark.parametrize("held", [0, 100, 10**9])
def test_hashes_are_each_shards_sha256_whatever_the_order(tmp_path, order, held):
    """Hashed as written in file order (holding early tensors up to `held` bytes), or read back
    at close once that is used up: either way the hash of each file as it is on disk."""
    import random

    arrays = _tensors()
    names = list(arrays)
    if order == "reversed":
        names.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(names)
    limit = arrays["layer.0.weight"].nbytes * 2
    w = ShardedWriter(tmp_path / "m", _out(arrays), max_shard_bytes=limit, hash_held_bytes=held)
    for name in names:
        w.write(name, arrays[name])
    files = w.close()
    shards = [f for f in files if f.endswith(".safetensors")]
    assert sorted(w.hashes) == sorted(shards) and len(shards) >= 3
    for file in shards:
        assert w.hashes[file] == _sha256(tmp_path / "m" / file), file


def test_a_mirror_holds_the_same_files(tmp_path):
    arrays = _tensors()
    limit = arrays["layer.0.weight"].nbytes * 2
    w = ShardedWriter(tmp_path / "m", _out(arrays), max_shard_bytes=limit, mirror=tmp_path / "copy")
    for name in reversed(list(arrays)):
        w.write(name, arrays[name])
    files = w.close()
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(files)
    for file in files:
        assert (tmp_path / "copy" / file).read_bytes() == (tmp_path / "m" / file).read_bytes()


def test_the_mirror_copies_without_copy_file_range_too(tmp_path, monkeypatch):
    """Where the kernel cannot copy (another filesystem, an older kernel), through a buffer."""
    import errno
    import os

    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    arrays = _tensors()
    w = ShardedWriter(tmp_path / "m", _out(arrays), mirror=tmp_path / "copy")
    for name, a in arrays.items():
        w.write(name, a)
    w.close()
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == \
        (tmp_path / "m" / "model.safetensors").read_bytes()
