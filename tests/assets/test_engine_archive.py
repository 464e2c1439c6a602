"""Backup and restore of the library: one plain tar, verified, restored without extracting."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from apps.assets.engine.archive import (
    MANIFEST_NAME,
    TABLES_NAME,
    BackupManifest,
    backup_restore,
    backup_verify,
    backup_write,
)
from apps.assets.engine.errors import (
    BackupCorruptError,
    BlobCorruptError,
    BlobMissingError,
    StoreError,
    StoreFullError,
    UnsafeArchiveError,
)
from apps.assets.engine.store import BlobStore
from apps.monitoring.engine.reporter import JobCancelled

from .test_engine_store import Recorder, corrupt_blob

TABLES = json.dumps({"format": 1, "assets": [{"name": "tiny-llama"}]}).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "store")


@pytest.fixture
def filled(store) -> tuple[BlobStore, list[str]]:
    shas = [store.ingest_stream([data])[0] for data in (os.urandom(200_000), b"config", b"")]
    return store, shas


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def member_offsets(path: Path) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {m.name: m.offset_data for m in tar.getmembers()}


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_backup_round_trip_into_an_empty_store(filled, tmp_path):
    store, shas = filled
    dest = tmp_path / "backups" / "library.tar"
    rec = Recorder()
    manifest = backup_write(dest, store=store, shas=shas + shas[:1], tables=TABLES,
                            meta={"version": "0.1.0"}, reporter=rec)
    assert siblings(dest) == ["library.tar"]  # no temp left beside it
    assert manifest.format == 1 and manifest.meta == {"version": "0.1.0"}
    assert manifest.blobs == sorted((s, os.stat(store.blob_path(s)).st_size) for s in set(shas))
    assert manifest.tables_sha256 == sha(TABLES)
    with tarfile.open(dest) as tar:
        names = tar.getnames()
    assert names == [MANIFEST_NAME, TABLES_NAME] + [f"blobs/{s[:2]}/{s}" for s in sorted(shas)]
    payload = len(TABLES) + 200_000 + 6
    assert rec.steps[-1][:2] == (2 * payload, 2 * payload)  # writing, then verifying

    assert backup_verify(dest) == manifest
    fresh = BlobStore(tmp_path / "fresh")
    restored, tables = backup_restore(dest, store=fresh)
    assert restored == manifest
    assert tables == TABLES
    assert list(fresh.iter_blobs()) == list(store.iter_blobs())
    assert fresh.verify().ok
    assert list(fresh.tmp.iterdir()) == []


def test_restore_twice_is_idempotent(filled, tmp_path):
    store, shas = filled
    dest = tmp_path / "b.tar"
    backup_write(dest, store=store, shas=shas, tables=TABLES, meta={})
    fresh = BlobStore(tmp_path / "fresh")
    backup_restore(dest, store=fresh)
    before = list(fresh.iter_blobs())
    rec = Recorder()
    _, tables = backup_restore(dest, store=fresh, reporter=rec)
    assert tables == TABLES
    assert list(fresh.iter_blobs()) == before
    assert rec.steps[-1][0] == rec.steps[-1][1]
    assert list(fresh.tmp.iterdir()) == []
    # Into the very store it came from: nothing to add either.
    backup_restore(dest, store=store)
    assert list(store.iter_blobs()) == before


def test_backup_refuses_an_existing_destination(filled, tmp_path):
    store, shas = filled
    dest = tmp_path / "b.tar"
    dest.write_bytes(b"precious")
    with pytest.raises(StoreError, match="already exists"):
        backup_write(dest, store=store, shas=shas, tables=TABLES, meta={})
    assert dest.read_bytes() == b"precious"


def test_backup_with_a_missing_blob_writes_nothing(filled, tmp_path):
    store, shas = filled
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BlobMissingError, match="9" * 64):
        backup_write(out / "b.tar", store=store, shas=[*shas, "9" * 64], tables=TABLES, meta={})
    assert list(out.iterdir()) == []


def test_backup_of_a_corrupt_blob_fails_and_leaves_nothing(filled, tmp_path):
    store, shas = filled
    corrupt_blob(store, shas[1], b"CONFIG")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BlobCorruptError, match=shas[1]):
        backup_write(out / "b.tar", store=store, shas=shas, tables=TABLES, meta={})
    assert list(out.iterdir()) == []


def test_backup_cancelled_leaves_nothing(filled, tmp_path):
    store, shas = filled
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(JobCancelled):
        backup_write(out / "b.tar", store=store, shas=shas, tables=TABLES, meta={},
                     reporter=Recorder(cancel_after=1))
    assert list(out.iterdir()) == []


def test_backup_disk_full_leaves_nothing(filled, tmp_path, monkeypatch):
    store, shas = filled
    out = tmp_path / "out"
    out.mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreFullError, match=r"b\.tar"):
        backup_write(out / "b.tar", store=store, shas=shas, tables=TABLES, meta={})
    assert list(out.iterdir()) == []


def test_verify_and_restore_detect_a_corrupt_blob_member(filled, tmp_path):
    store, shas = filled
    dest = tmp_path / "b.tar"
    backup_write(dest, store=store, shas=shas, tables=TABLES, meta={})
    big = shas[0]
    member = f"blobs/{big[:2]}/{big}"
    flip_byte(dest, member_offsets(dest)[member] + 1000)
    with pytest.raises(BackupCorruptError, match=member):
        backup_verify(dest)
    fresh = BlobStore(tmp_path / "fresh")
    with pytest.raises(BackupCorruptError, match=member):
        backup_restore(dest, store=fresh)
    assert not fresh.has(big)
    assert list(fresh.tmp.iterdir()) == []


def test_verify_detects_tampered_tables(filled, tmp_path):
    store, shas = filled
    dest = tmp_path / "b.tar"
    backup_write(dest, store=store, shas=shas, tables=TABLES, meta={})
    flip_byte(dest, member_offsets(dest)[TABLES_NAME] + 3)
    with pytest.raises(BackupCorruptError, match=TABLES_NAME):
        backup_verify(dest)


def test_verify_detects_a_truncated_archive(filled, tmp_path):
    store, shas = filled
    dest = tmp_path / "b.tar"
    backup_write(dest, store=store, shas=shas, tables=TABLES, meta={})
    with open(dest, "r+b") as fh:
        fh.truncate(os.path.getsize(dest) // 2)
    with pytest.raises(BackupCorruptError):
        backup_verify(dest)
    with pytest.raises(BackupCorruptError):
        backup_restore(dest, store=BlobStore(tmp_path / "fresh"))


# -- hand-made archives -------------------------------------------------------------------------------


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def hand_made(path: Path, blobs: list[bytes], *, listed: list[bytes] | None = None,
              extra: tarfile.TarInfo | None = None, fmt: int = 1) -> Path:
    """manifest (listing `listed`, default `blobs`), tables, the blobs, then `extra` last."""
    listed = blobs if listed is None else listed
    manifest = BackupManifest(format=fmt, created_at="2025-01-01T00:00:00+00:00",
                              blobs=[(sha(b), len(b)) for b in listed], tables_sha256=sha(TABLES), meta={})
    with tarfile.open(path, "w") as tar:
        add_bytes(tar, MANIFEST_NAME, manifest.to_json())
        add_bytes(tar, TABLES_NAME, TABLES)
        for data in blobs:
            add_bytes(tar, f"blobs/{sha(data)[:2]}/{sha(data)}", data)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isreg() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    info.devmajor, info.devminor = 1, 3
    return info


GOOD = b"a good blob that a careless restore would write first"
UNSAFE = {
    "dotdot": (member("../escaped.txt", size=1), "`..`"),
    "dotdot-deep": (member(f"blobs/../../{sha(b'x')}", size=1), "`..`"),
    "absolute": (member("/etc/cron.d/evil", size=1), "absolute path"),
    "symlink": (member(f"blobs/ab/{'ab' * 32}", tarfile.SYMTYPE, linkname="/etc/passwd"), "symlink"),
    "hardlink": (member("blobs/cd/" + "cd" * 32, tarfile.LNKTYPE, linkname=MANIFEST_NAME), "hard link"),
    "char-device": (member("dev-null", tarfile.CHRTYPE), "device"),
    "block-device": (member("sda", tarfile.BLKTYPE), "device"),
    "fifo": (member("pipe", tarfile.FIFOTYPE), "fifo"),
    "unexpected-name": (member("notes.txt", size=1), "unexpected name"),
    "wrong-fanout": (member(f"blobs/zz/{sha(b'x')}", size=1), "unexpected name"),
    "unexpected-folder": (member("etc", tarfile.DIRTYPE), "unexpected folder"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_restore_refuses_unsafe_members_before_writing_anything(store, tmp_path, case):
    evil, why = UNSAFE[case]
    path = hand_made(tmp_path / f"{case}.tar", [GOOD], extra=evil)
    with pytest.raises(UnsafeArchiveError) as raised:
        backup_restore(path, store=store)
    assert repr(evil.name) in str(raised.value)
    assert why in str(raised.value)
    assert store.usage() == (0, 0)  # not even the good blob before it
    assert list(store.tmp.iterdir()) == []
    with pytest.raises(UnsafeArchiveError, match=re.escape(why)):
        backup_verify(path)


def test_hand_made_archive_restores(store, tmp_path):
    path = hand_made(tmp_path / "ok.tar", [GOOD, b"second"])
    manifest, tables = backup_restore(path, store=store)
    assert tables == TABLES
    assert sorted(s for s, _ in manifest.blobs) == sorted([sha(GOOD), sha(b"second")])
    assert store.has(sha(GOOD)) and store.has(sha(b"second"))


def test_a_manifest_blob_absent_from_the_archive_is_corrupt(store, tmp_path):
    path = hand_made(tmp_path / "short.tar", [GOOD], listed=[GOOD, b"lost"])
    with pytest.raises(BackupCorruptError, match=f"blobs/{sha(b'lost')[:2]}/{sha(b'lost')}"):
        backup_verify(path)
    with pytest.raises(BackupCorruptError, match="missing"):
        backup_restore(path, store=store)
    assert store.usage() == (0, 0)  # the header pass already knew


def test_a_blob_not_in_the_manifest_is_corrupt(store, tmp_path):
    path = hand_made(tmp_path / "extra.tar", [GOOD, b"stowaway"], listed=[GOOD])
    with pytest.raises(BackupCorruptError, match="not listed in the manifest"):
        backup_restore(path, store=store)
    assert store.usage() == (0, 0)


def test_another_backup_format_is_refused(store, tmp_path):
    path = hand_made(tmp_path / "future.tar", [GOOD], fmt=2)
    with pytest.raises(StoreError, match="format 2 is not supported"):
        backup_restore(path, store=store)


def test_not_a_tar_at_all(store, tmp_path):
    path = tmp_path / "junk.tar"
    path.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(BackupCorruptError):
        backup_verify(path)
    with pytest.raises(StoreError, match="no such backup"):
        backup_verify(tmp_path / "absent.tar")
