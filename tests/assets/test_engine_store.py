"""The blob store engine: ingest, export, verify, gc, links and hash reuse, and its faults."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from apps.assets.engine import hashing
from apps.assets.engine.errors import (
    BlobCorruptError,
    BlobMissingError,
    SourceChangedError,
    StoreError,
    StoreFullError,
)
from apps.assets.engine.store import BlobStore, FileEntry, GcPlan, hf_blob_sha
from apps.monitoring.engine.reporter import JobCancelled


class Recorder:
    """A reporter that remembers every step; hooks let a test act in the middle of an ingest."""

    def __init__(self, on_step=None, cancel_after: int | None = None):
        self.steps: list[tuple[int, int | None, dict]] = []
        self.logs: list[str] = []
        self.on_step = on_step
        self.cancel_after = cancel_after
        self.cancel_checks = 0

    def step(self, done, total=None, **metrics):
        self.steps.append((done, total, metrics))
        if self.on_step:
            self.on_step(len(self.steps))

    def log(self, msg):
        self.logs.append(msg)

    def cancelled(self):
        self.cancel_checks += 1
        return self.cancel_after is not None and self.cancel_checks > self.cancel_after


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def blob_files(store: BlobStore) -> list[Path]:
    return sorted(p for p in store.blobs.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "store")


@pytest.fixture
def small_chunks(monkeypatch):
    """64 KiB chunks, 256 KiB writeback: files over 128 KiB take the writer-thread path."""
    monkeypatch.setattr(hashing, "CHUNK", 64 << 10)
    monkeypatch.setattr(hashing, "WRITEBACK", 256 << 10)


# -- ingest -------------------------------------------------------------------------------------


def test_ingest_file_stores_read_only_blob_by_sha(store, tmp_path):
    data = b"weights" * 1000
    src = make_file(tmp_path / "src" / "model.safetensors", data)
    entry = store.ingest_file(src)
    assert entry == FileEntry("model.safetensors", sha(data), len(data))
    blob = store.blob_path(entry.sha256)
    assert blob == store.root / "blobs" / entry.sha256[:2] / entry.sha256
    assert blob.read_bytes() == data
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert store.has(entry.sha256)
    assert list(store.tmp.iterdir()) == []
    assert src.read_bytes() == data  # a copy, the source untouched
    assert blob.stat().st_ino != src.stat().st_ino


def test_ingest_file_rel_path_and_empty_file(store, tmp_path):
    src = make_file(tmp_path / "empty", b"")
    entry = store.ingest_file(src, rel_path="sub/empty.txt")
    assert entry == FileEntry("sub/empty.txt", sha(b""), 0)
    assert store.blob_path(entry.sha256).read_bytes() == b""


def test_ingest_same_content_twice_gives_one_blob(store, tmp_path):
    a = make_file(tmp_path / "a.bin", b"same" * 5000)
    b = make_file(tmp_path / "b.bin", b"same" * 5000)
    assert store.ingest_file(a).sha256 == store.ingest_file(b).sha256
    assert store.usage() == (1, 20000)
    assert list(store.tmp.iterdir()) == []


def test_ingest_many_chunks_hashes_and_copies_exactly(store, tmp_path, small_chunks):
    data = os.urandom(1 << 20) + b"tail"  # 16 chunks and a bit, 4 writeback kicks
    entry = store.ingest_file(make_file(tmp_path / "big.bin", data))
    assert entry.sha256 == sha(data)
    assert store.blob_path(entry.sha256).read_bytes() == data


def test_missing_or_non_regular_source_is_a_store_error(store, tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        store.ingest_file(tmp_path / "nope")
    with pytest.raises(StoreError, match="not a regular file"):
        store.ingest_file(tmp_path)


def test_reporter_gets_throttled_byte_steps_ending_at_total(store, tmp_path, small_chunks):
    data = os.urandom(2 << 20)  # 32 chunks, copied in well under 0.1 s each
    rec = Recorder()
    store.ingest_file(make_file(tmp_path / "f", data), reporter=rec)
    assert rec.steps[-1][:2] == (len(data), len(data))
    assert "mb_s" in rec.steps[-1][2]
    assert len(rec.steps) < 32  # not one per chunk
    assert rec.cancel_checks >= 32  # but cancel is checked between chunks
    dones = [done for done, _, _ in rec.steps]
    assert dones == sorted(dones)


def test_cancel_mid_ingest_leaves_nothing(store, tmp_path, small_chunks):
    src = make_file(tmp_path / "f", os.urandom(1 << 20))
    with pytest.raises(JobCancelled):
        store.ingest_file(src, reporter=Recorder(cancel_after=3))
    assert blob_files(store) == []
    assert list(store.tmp.iterdir()) == []


def test_blob_path_refuses_what_is_not_a_sha256(store):
    for bad in ("../../etc/passwd", "ABCDEF" + "0" * 58, "0" * 63, ""):
        with pytest.raises(StoreError):
            store.blob_path(bad)


# -- faults: a changing source, a full disk, concurrent ingests ------------------------------------


def test_source_appended_during_ingest_raises_and_stores_nothing(store, tmp_path, small_chunks):
    src = make_file(tmp_path / "growing.bin", os.urandom(1 << 20))

    def append(step_number):
        if step_number == 1:
            with open(src, "ab") as fh:
                fh.write(b"more bytes")

    with pytest.raises(SourceChangedError, match=r"growing\.bin"):
        store.ingest_file(src, reporter=Recorder(on_step=append))
    assert blob_files(store) == []
    assert list(store.tmp.iterdir()) == []
    assert store.usage() == (0, 0)


def test_source_replaced_during_ingest_raises(store, tmp_path, small_chunks):
    src = make_file(tmp_path / "swapped.bin", os.urandom(1 << 20))
    other = make_file(tmp_path / "other.bin", os.urandom(1 << 20))  # same size, another inode

    def swap(step_number):
        if step_number == 1:
            os.replace(other, src)

    with pytest.raises(SourceChangedError, match=r"swapped\.bin.*inode"):
        store.ingest_file(src, reporter=Recorder(on_step=swap))
    assert store.usage() == (0, 0)
    assert list(store.tmp.iterdir()) == []


@pytest.mark.parametrize("size", [300_000, 1 << 20], ids=["one-buffer", "writer-thread"])
def test_disk_full_on_write_raises_store_full_and_keeps_store(store, tmp_path, monkeypatch, small_chunks,
                                                              size):
    kept = store.ingest_file(make_file(tmp_path / "kept.bin", b"kept" * 1000))
    src = make_file(tmp_path / "new-weights.bin", os.urandom(size))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreFullError, match=r"disk of the store .* is full .*new-weights\.bin"):
        store.ingest_file(src)
    monkeypatch.undo()
    assert list(store.tmp.iterdir()) == []
    assert store.usage() == (1, 4000)
    assert store.verify().ok
    assert store.blob_path(kept.sha256).read_bytes() == b"kept" * 1000


def test_disk_full_on_fsync_raises_store_full(store, tmp_path, monkeypatch):
    src = make_file(tmp_path / "late.bin", b"x" * 1000)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreFullError, match=r"late\.bin"):
        store.ingest_file(src)
    monkeypatch.undo()
    assert list(store.tmp.iterdir()) == []
    assert store.usage() == (0, 0)


def test_disk_full_in_ingest_stream(store, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreFullError, match="upload-7"):
        store.ingest_stream([b"abc"], name="upload-7")
    monkeypatch.undo()
    assert list(store.tmp.iterdir()) == []


def test_concurrent_ingests_of_the_same_content_give_one_blob(store, tmp_path):
    data = os.urandom(3 << 20)
    sources = [make_file(tmp_path / f"copy{i}.bin", data) for i in range(4)]
    barrier = threading.Barrier(4)

    def ingest(src):
        barrier.wait()
        return store.ingest_file(src)

    with ThreadPoolExecutor(4) as pool:
        entries = list(pool.map(ingest, sources))
    assert {e.sha256 for e in entries} == {sha(data)}
    assert blob_files(store) == [store.blob_path(sha(data))]
    assert list(store.tmp.iterdir()) == []
    assert store.verify().ok


def test_ingest_that_loses_the_race_drops_its_temp(store, tmp_path, small_chunks):
    # While ingest A copies, ingest B of the same content completes: A finds the blob there.
    data = os.urandom(1 << 20)
    a = make_file(tmp_path / "a.bin", data)
    b = make_file(tmp_path / "b.bin", data)

    def other_ingest(step_number):
        if step_number == 1:
            store.ingest_file(b)

    entry = store.ingest_file(a, reporter=Recorder(on_step=other_ingest))
    assert entry.sha256 == sha(data)
    assert blob_files(store) == [store.blob_path(sha(data))]
    assert list(store.tmp.iterdir()) == []


# -- trees --------------------------------------------------------------------------------------


def test_ingest_tree_walks_sorted_posix_paths_following_inner_symlinks(store, tmp_path):
    root = tmp_path / "model"
    make_file(root / "config.json", b"{}")
    make_file(root / "b" / "z.txt", b"z")
    make_file(root / "a.txt", b"a")
    make_file(root / "b" / "c" / "deep.bin", b"deep")
    (root / "link.txt").symlink_to("a.txt")  # stays inside: followed
    (root / "linked-dir").symlink_to("b/c")  # a folder inside: followed
    entries = store.ingest_tree(root)
    assert [e.path for e in entries] == ["a.txt", "b/c/deep.bin", "b/z.txt", "config.json", "link.txt",
                                         "linked-dir/deep.bin"]
    assert {e.path: e.sha256 for e in entries}["link.txt"] == sha(b"a")
    assert store.usage() == (4, 8)


def test_ingest_tree_of_a_file_is_one_entry(store, tmp_path):
    src = make_file(tmp_path / "adapter_model.safetensors", b"lora")
    assert store.ingest_tree(src) == [FileEntry("adapter_model.safetensors", sha(b"lora"), 4)]


def test_ingest_tree_reports_bytes_over_the_whole_tree(store, tmp_path):
    root = tmp_path / "t"
    for i in range(5):
        make_file(root / f"f{i}", b"x" * 1000)
    rec = Recorder()
    store.ingest_tree(root, reporter=rec)
    assert rec.steps[-1][:2] == (5000, 5000)
    assert all(total == 5000 for _, total, _ in rec.steps)


@pytest.mark.parametrize("kind", ["outside", "broken", "loop", "fifo"])
def test_ingest_tree_refuses_what_it_cannot_follow_and_stores_nothing(store, tmp_path, kind):
    root = tmp_path / "t"
    make_file(root / "a.txt", b"a")
    bad = root / "sub" / "bad"
    bad.parent.mkdir()
    if kind == "outside":
        make_file(tmp_path / "secret.txt", b"secret")
        bad.symlink_to(tmp_path / "secret.txt")
    elif kind == "broken":
        bad.symlink_to(root / "gone")
    elif kind == "loop":
        bad.symlink_to(root)
    else:
        os.mkfifo(bad)
    with pytest.raises(StoreError, match=re.escape(str(bad))):
        store.ingest_tree(root)
    assert store.usage() == (0, 0)


# -- streams --------------------------------------------------------------------------------------


def test_ingest_stream_hashes_while_writing(store):
    chunks = [b"part one,", b"part two"]
    digest, size = store.ingest_stream(iter(chunks), expected_sha256=sha(b"".join(chunks)))
    assert (digest, size) == (sha(b"part one,part two"), 17)
    with store.open_blob(digest) as fh:
        assert fh.read() == b"part one,part two"


def test_ingest_stream_with_wrong_expected_sha_keeps_nothing(store):
    with pytest.raises(BlobCorruptError, match="my-upload"):
        store.ingest_stream([b"abc"], expected_sha256=sha(b"abd"), name="my-upload")
    assert store.usage() == (0, 0)
    assert list(store.tmp.iterdir()) == []


def test_ingest_stream_whose_source_fails_keeps_nothing(store):
    def broken():
        yield b"first"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.ingest_stream(broken())
    assert list(store.tmp.iterdir()) == []
    assert store.usage() == (0, 0)


def test_open_missing_blob(store):
    with pytest.raises(BlobMissingError, match="0" * 64):
        store.open_blob("0" * 64)


# -- export -----------------------------------------------------------------------------------------


def test_export_writes_the_files_and_checks_them(store, tmp_path):
    root = tmp_path / "src"
    make_file(root / "config.json", b'{"a": 1}')
    make_file(root / "sub" / "w.bin", b"w" * 5000)
    entries = store.ingest_tree(root)
    rec = Recorder()
    dest = tmp_path / "out" / "model"
    store.export(entries, dest, reporter=rec)
    assert (dest / "config.json").read_bytes() == b'{"a": 1}'
    assert (dest / "sub" / "w.bin").read_bytes() == b"w" * 5000
    assert os.access(dest / "sub" / "w.bin", os.W_OK)  # the user's copy, not a read-only blob
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # temp sibling gone
    assert rec.steps[-1][:2] == (5008, 5008)
    with pytest.raises(StoreError, match="already exists"):
        store.export(entries, dest)


def test_export_missing_blob_writes_nothing(store, tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(BlobMissingError, match=r"a\.bin"):
        store.export([FileEntry("a.bin", "1" * 64, 3)], dest)
    assert list(tmp_path.iterdir()) == [store.root]


def test_export_refuses_paths_leaving_the_folder(store, tmp_path):
    entry = store.ingest_file(make_file(tmp_path / "x", b"x"))
    for bad in ("../x", "/etc/x", "a/../../x", "a//b", ""):
        with pytest.raises(StoreError, match="unsafe path"):
            store.export([FileEntry(bad, entry.sha256, 1)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def corrupt_blob(store: BlobStore, sha256: str, data: bytes) -> None:
    blob = store.blob_path(sha256)
    blob.chmod(0o644)
    blob.write_bytes(data)
    blob.chmod(0o444)


def test_export_detects_a_corrupt_blob(store, tmp_path):
    entry = store.ingest_file(make_file(tmp_path / "w.bin", b"good" * 100), rel_path="sub/w.bin")
    corrupt_blob(store, entry.sha256, b"evil" * 100)
    with pytest.raises(BlobCorruptError, match=rf"{entry.sha256}.*sub/w\.bin"):
        store.export([entry], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "w.bin"]


# -- verify, gc, tmp, usage -------------------------------------------------------------------------


def test_verify_finds_corrupt_truncated_and_missing_blobs(store, tmp_path):
    good = store.ingest_file(make_file(tmp_path / "g", b"good"))
    flipped = store.ingest_file(make_file(tmp_path / "f", b"flipped"))
    cut = store.ingest_file(make_file(tmp_path / "c", b"truncated"))
    assert store.verify().ok
    corrupt_blob(store, flipped.sha256, b"flopped")
    corrupt_blob(store, cut.sha256, b"trunc")
    report = store.verify()
    assert not report.ok
    assert sorted(report.corrupt) == sorted([flipped.sha256, cut.sha256])
    assert report.checked == 3 and report.bytes == 4 + 7 + 5
    absent = "f" * 64
    report = store.verify({good.sha256: 4, absent: 10, cut.sha256: 9})
    assert report.missing == [absent]
    assert report.corrupt == [cut.sha256]
    assert report.checked == 2


def test_verify_reports_bytes_and_honours_cancel(store, tmp_path):
    store.ingest_file(make_file(tmp_path / "a", b"a" * 1000))
    rec = Recorder()
    store.verify(reporter=rec)
    assert rec.steps[-1][:2] == (1000, 1000)
    with pytest.raises(JobCancelled):
        store.verify(reporter=Recorder(cancel_after=0))


def test_gc_plans_then_deletes_only_what_is_still_unreferenced(store, tmp_path):
    keep = store.ingest_file(make_file(tmp_path / "keep", b"keep"))
    old = store.ingest_file(make_file(tmp_path / "old", b"old-bytes"))
    revived = store.ingest_file(make_file(tmp_path / "revived", b"revived!"))
    plan = store.gc_plan({keep.sha256})
    assert isinstance(plan, GcPlan)
    assert sorted(plan.unreferenced) == sorted([(old.sha256, 9), (revived.sha256, 8)])
    assert plan.bytes == 17
    assert store.usage() == (3, 21)  # planning deletes nothing
    freed = store.gc_execute(plan, referenced={keep.sha256, revived.sha256})
    assert freed == 9
    assert not store.has(old.sha256)
    assert store.has(keep.sha256) and store.has(revived.sha256)
    assert store.gc_execute(plan, referenced=set()) == 8  # the old one is gone already: not counted


def test_clean_tmp_removes_leftovers(store):
    (store.tmp / "ingest-abc").write_bytes(b"half a file")
    (store.tmp / "stream-def").write_bytes(b"")
    (store.tmp / "somedir").mkdir()
    (store.tmp / "somedir" / "x").write_bytes(b"x")
    assert store.clean_tmp() == 3
    assert list(store.tmp.iterdir()) == []
    assert store.clean_tmp() == 0


def test_usage_counts_blobs_only(store, tmp_path):
    store.ingest_file(make_file(tmp_path / "a", b"12345"))
    store.ingest_file(make_file(tmp_path / "b", b"123"))
    (store.tmp / "ingest-x").write_bytes(b"not counted")
    (store.blobs / "README").write_text("not a blob")
    assert store.usage() == (2, 8)


# -- link=True: reflinks, hard links, the hash cache, the Hugging Face cache -------------------------


def no_reflink(monkeypatch):
    def refuse(fd, request, arg=0):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr("fcntl.ioctl", refuse)


def hashing_forbidden(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the file was read and hashed")

    monkeypatch.setattr(hashlib, "sha256", boom)


def test_link_hard_links_on_the_same_filesystem(store, tmp_path, monkeypatch):
    no_reflink(monkeypatch)
    src = make_file(tmp_path / "w.bin", b"hardlinked" * 100)
    entry = store.ingest_file(src, link=True)
    blob = store.blob_path(entry.sha256)
    assert entry.sha256 == sha(b"hardlinked" * 100)
    assert blob.stat().st_ino == src.stat().st_ino  # no byte copied
    assert src.stat().st_nlink == 2
    assert list(store.tmp.iterdir()) == []


def test_link_tries_a_reflink_first(store, tmp_path, monkeypatch):
    calls = []

    def fake_ficlone(fd, request, arg=0):
        calls.append(request)
        os.write(fd, os.pread(arg, 1 << 20, 0))  # what a reflink shows: the same bytes

    monkeypatch.setattr("fcntl.ioctl", fake_ficlone)
    src = make_file(tmp_path / "w.bin", b"reflinked")
    entry = store.ingest_file(src, link=True)
    assert calls == [0x40049409]
    assert store.blob_path(entry.sha256).stat().st_ino != src.stat().st_ino
    assert store.blob_path(entry.sha256).read_bytes() == b"reflinked"


def test_link_across_filesystems_falls_back_to_copying(store, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_tmp_dev", -1)  # as if tmp/ were on another device
    src = make_file(tmp_path / "w.bin", b"copied")
    entry = store.ingest_file(src, link=True)
    assert store.blob_path(entry.sha256).stat().st_ino != src.stat().st_ino
    assert store.blob_path(entry.sha256).read_bytes() == b"copied"


def test_link_uses_the_hash_cache_and_does_not_read_a_known_file(store, tmp_path, monkeypatch):
    src = make_file(tmp_path / "w.bin", b"cached" * 100)
    first = store.ingest_file(src)  # a plain copy fills the cache too
    assert store.hash_cache.get(os.stat(src)) == first.sha256
    with monkeypatch.context() as m:
        hashing_forbidden(m)
        again = store.ingest_file(src, link=True)
    assert again == first
    # Changing the file (size and mtime) makes the cached hash stale: read again.
    src.write_bytes(b"changed")
    assert store.hash_cache.get(os.stat(src)) is None
    assert store.ingest_file(src, link=True).sha256 == sha(b"changed")


def fake_hf_cache(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """models--org--name/{blobs/<sha256>, snapshots/<rev>/<file> -> ../../blobs/<sha256>}."""
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in files.items():
        make_file(repo / "blobs" / sha(data), data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", sha(data)))
    return snapshot


def test_hf_cache_blob_name_is_used_as_the_hash(store, tmp_path, monkeypatch):
    no_reflink(monkeypatch)
    data = b"safetensors bytes" * 100
    snapshot = fake_hf_cache(tmp_path, {"model.safetensors": data})
    link = snapshot / "model.safetensors"
    assert hf_blob_sha(link) == sha(data)
    with monkeypatch.context() as m:
        hashing_forbidden(m)
        entry = store.ingest_file(link, link=True)
    assert entry == FileEntry("model.safetensors", sha(data), len(data))
    assert store.blob_path(entry.sha256).stat().st_ino == link.resolve().stat().st_ino
    assert store.hash_cache.get(os.stat(link)) == sha(data)


def test_hf_snapshot_folder_ingests_through_its_symlinks(store, tmp_path, monkeypatch):
    files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"w" * 4096}
    snapshot = fake_hf_cache(tmp_path, files)
    with monkeypatch.context() as m:
        hashing_forbidden(m)
        entries = store.ingest_tree(snapshot, link=True)
    assert entries == [FileEntry(name, sha(data), len(data)) for name, data in sorted(files.items())]
    assert store.verify().ok


def test_hf_cache_without_link_copies_and_checks_the_name(store, tmp_path):
    snapshot = fake_hf_cache(tmp_path, {"model.safetensors": b"honest"})
    entry = store.ingest_file(snapshot / "model.safetensors")
    assert store.blob_path(entry.sha256).stat().st_ino != (snapshot / "model.safetensors").stat().st_ino
    # A cache blob whose content is not what its name says is refused, not stored under the name.
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(b"damage")
    with pytest.raises(BlobCorruptError, match="Hugging Face"):
        store.ingest_file(snapshot / "model.safetensors")
    assert store.usage() == (1, 6)


def test_hf_blob_sha_ignores_other_files(tmp_path):
    plain = make_file(tmp_path / "blobs" / ("a" * 64), b"x")
    assert hf_blob_sha(plain) is None  # not a symlink
    (tmp_path / "l").symlink_to(make_file(tmp_path / "blobs" / ("b" * 40), b"git sha1 name"))
    assert hf_blob_sha(tmp_path / "l") is None


def test_link_to_content_already_stored_leaves_the_source_alone(store, tmp_path, monkeypatch):
    no_reflink(monkeypatch)
    store.ingest_file(make_file(tmp_path / "first.bin", b"shared"))
    src = make_file(tmp_path / "second.bin", b"shared")  # same bytes, another inode, not cached
    src.chmod(0o644)
    entry = store.ingest_file(src, link=True)
    assert entry.sha256 == sha(b"shared")
    assert stat.S_IMODE(src.stat().st_mode) == 0o644  # not made read-only: not the blob
    assert src.stat().st_nlink == 1
    assert list(store.tmp.iterdir()) == []


def test_a_blob_of_the_wrong_size_is_replaced_by_the_next_ingest(store, tmp_path):
    src = make_file(tmp_path / "w.bin", b"complete content")
    entry = store.ingest_file(src)
    corrupt_blob(store, entry.sha256, b"compl")
    assert store.ingest_file(src) == entry
    assert store.verify().ok
