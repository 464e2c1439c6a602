"""Backup and restore of the whole library as one plain, uncompressed `.tar`.

Members, in this order:
    audobon-backup.json     the manifest: format, created_at, meta, blobs [[sha256, size]...],
                            tables_sha256
    tables.json             the database rows, as the caller serialised them (opaque here)
    blobs/<sha[:2]>/<sha>   one per blob (weights are already dense: compression buys little)

Any tar tool can list or unpack it. Restore never unpacks it, though: it reads members one
by one and feeds each blob through `BlobStore.ingest_stream`, which re-hashes it, after a first
pass has refused anything but those names as regular files (no links, devices, `..`...).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from apps.assets.engine.errors import (
    BackupCorruptError,
    BlobCorruptError,
    BlobMissingError,
    StoreError,
    StoreFullError,
    UnsafeArchiveError,
)
from apps.assets.engine.hashing import CHUNK
from apps.assets.engine.progress import ByteProgress
from apps.assets.engine.store import DISK_FULL_ERRNOS, SHA256_RE, BlobStore, fsync_dir
from apps.monitoring.engine.reporter import Reporter

from .safeparse import json_loads

BACKUP_FORMAT = 1
MANIFEST_NAME = "audobon-backup.json"
TABLES_NAME = "tables.json"
BLOB_MEMBER_RE = re.compile(r"blobs/([0-9a-f]{2})/([0-9a-f]{64})")
BLOB_DIR_RE = re.compile(r"blobs(/[0-9a-f]{2})?")  # other tar tools add these; harmless
MANIFEST_MAX = 256 << 20  # read into memory: a hostile archive must not make us allocate gigabytes
TABLES_MAX = 2 << 30


@dataclass
class BackupManifest:
    format: int
    created_at: str
    blobs: list[tuple[str, int]]
    tables_sha256: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"format": self.format, "created_at": self.created_at, "meta": self.meta,
                           "blobs": [[sha, size] for sha, size in self.blobs],
                           "tables_sha256": self.tables_sha256}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BackupManifest:
        try:
            raw = json_loads(data, source="the backup manifest", max_bytes=None)
            manifest = cls(format=raw["format"], created_at=raw["created_at"],
                           blobs=[(sha, size) for sha, size in raw["blobs"]],
                           tables_sha256=raw["tables_sha256"], meta=raw.get("meta", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise BackupCorruptError(f"member {MANIFEST_NAME}: not a valid manifest ({err})") from None
        if manifest.format != BACKUP_FORMAT:
            raise StoreError(f"member {MANIFEST_NAME}: backup format {manifest.format!r} is not supported "
                             f"(this version reads format {BACKUP_FORMAT})")
        well_formed = (isinstance(manifest.created_at, str) and isinstance(manifest.meta, dict)
                       and isinstance(manifest.tables_sha256, str)
                       and SHA256_RE.fullmatch(manifest.tables_sha256)
                       and all(isinstance(sha, str) and SHA256_RE.fullmatch(sha)
                               and isinstance(size, int) and size >= 0 for sha, size in manifest.blobs))
        if not well_formed:
            raise BackupCorruptError(f"member {MANIFEST_NAME}: malformed field values")
        if len({sha for sha, _ in manifest.blobs}) != len(manifest.blobs):
            raise BackupCorruptError(f"member {MANIFEST_NAME}: a blob is listed twice")
        return manifest


def blob_member_name(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


# -- writing ----------------------------------------------------------------------------------


class _HashingReader:
    """A blob file as tarfile reads it, hashed and counted on the way."""

    def __init__(self, fh, sha256: str, progress: ByteProgress) -> None:
        self.fh = fh
        self.sha256 = sha256
        self.progress = progress
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        if 0 <= size != len(data):  # tarfile asks exactly what the header promised
            raise BlobCorruptError(f"blob {self.sha256} in the store is shorter than its recorded size")
        self.sha.update(data)
        self.progress.add(len(data))
        self.progress.check_cancel()
        return data


def backup_write(dest: Path, *, store: BlobStore, shas: Iterable[str], tables: bytes, meta: dict,
                 reporter: Reporter | None = None) -> BackupManifest:
    """Write the backup to a temp name next to `dest`, verify it, then rename it to `dest`.

    So `dest` only ever names a complete, verified backup; a killed backup leaves
    `.<dest name>.tmp-<random>` beside it.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise StoreError(f"backup destination already exists: {dest}")
    wanted = sorted(set(shas))
    for sha in wanted:
        if not store.has(sha):
            raise BlobMissingError(f"blob {sha} is not in the store {store.root}; no backup was written")
    blobs = [(sha, os.stat(store.blob_path(sha)).st_size) for sha in wanted]
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = BackupManifest(format=BACKUP_FORMAT, created_at=created_at, blobs=blobs,
                              tables_sha256=hashlib.sha256(tables).hexdigest(), meta=meta)
    manifest_bytes = manifest.to_json()  # a meta that is not JSON fails here, before any write
    payload = len(tables) + sum(size for _, size in blobs)
    # Writing, then the verify pass re-reading it all: both count.
    progress = ByteProgress(reporter, 2 * payload, what=f"backup to {dest}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with open(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    tar.copybufsize = CHUNK
                    _add_bytes(tar, MANIFEST_NAME, manifest_bytes)
                    _add_bytes(tar, TABLES_NAME, tables)
                    progress.add(len(tables))
                    for sha, size in blobs:
                        _add_blob(tar, store, sha, size, progress)
                raw.flush()
                os.fsync(raw.fileno())
        except OSError as err:
            if err.errno in DISK_FULL_ERRNOS:
                raise StoreFullError(f"the disk holding {dest.parent} is full (writing backup {dest.name})") \
                    from err
            raise
        progress.reporter.log(f"verifying {dest.name}")
        _walk_archive(tmp, progress, on_blob=_hash_member)
        if dest.exists() or dest.is_symlink():
            raise StoreError(f"backup destination appeared while writing: {dest}")
        os.rename(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    progress.finish()
    return manifest


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = int(datetime.now(UTC).timestamp())
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_member_info(name, len(data)), io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, store: BlobStore, sha: str, size: int, progress: ByteProgress) -> None:
    with store.open_blob(sha) as fh:
        if os.fstat(fh.fileno()).st_size != size:
            raise BlobCorruptError(f"blob {sha} changed size in the store while backing up")
        reader = _HashingReader(fh, sha, progress)
        tar.addfile(_member_info(blob_member_name(sha), size), reader)
    if reader.sha.hexdigest() != sha:
        raise BlobCorruptError(f"blob {sha} in the store is corrupt (it hashes to {reader.sha.hexdigest()}); "
                               "no backup was written")


# -- reading ----------------------------------------------------------------------------------


def backup_verify(path: Path, *, reporter: Reporter | None = None) -> BackupManifest:
    """Read the whole archive once: every member allowed, every blob hashing to its name and size,
    every manifest blob present, tables.json matching its hash."""
    progress = ByteProgress(reporter, None, what=f"verify of {Path(path).name}")
    manifest, _ = _walk_archive(Path(path), progress, on_blob=_hash_member)
    progress.finish()
    return manifest


def backup_restore(path: Path, *, store: BlobStore, reporter: Reporter | None = None,
                   check: Callable[[BackupManifest, bytes], None] | None = None,
                   ) -> tuple[BackupManifest, bytes]:
    """Put the archive's blobs into `store` (those already there are skipped) and return the
    manifest and the tables bytes, for the caller to load.

    A first pass over every header refuses unsafe or unexpected members before anything is
    written; `check` then sees the manifest and the tables (and raises to refuse them), still
    before anything is written; blobs are then re-hashed as they are stored.
    """
    path = Path(path)
    first_manifest, first_tables = _walk_archive(path, ByteProgress(None, None), on_blob=None)
    if check is not None:
        check(first_manifest, first_tables)

    def ingest(tar: tarfile.TarFile, member: tarfile.TarInfo, sha: str, progress: ByteProgress) -> None:
        if store.has(sha):
            progress.add(member.size)  # restore is idempotent: the store's copy is the same content
            return
        fh = tar.extractfile(member)
        if fh is None:
            raise BackupCorruptError(f"member {member.name}: no data")
        with fh:
            try:
                store.ingest_stream(_chunks(fh, progress), expected_sha256=sha, name=member.name)
            except BlobCorruptError as err:
                raise BackupCorruptError(f"member {member.name}: {err}") from None

    progress = ByteProgress(reporter, None, what=f"restore of {path.name}")
    manifest, tables = _walk_archive(path, progress, on_blob=ingest)
    if tables != first_tables or manifest.blobs != first_manifest.blobs:
        raise BackupCorruptError(f"{path}: the archive changed while it was being restored")
    progress.finish()
    return manifest, tables


def _chunks(fh, progress: ByteProgress) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        progress.add(len(chunk))
        progress.check_cancel()
        yield chunk


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, sha: str, progress: ByteProgress) -> None:
    fh = tar.extractfile(member)
    if fh is None:
        raise BackupCorruptError(f"member {member.name}: no data")
    digest = hashlib.sha256()
    read = 0
    with fh:
        for chunk in _chunks(fh, progress):
            digest.update(chunk)
            read += len(chunk)
    if read != member.size:
        raise BackupCorruptError(f"member {member.name}: truncated ({read} of {member.size} bytes)")
    if digest.hexdigest() != sha:
        raise BackupCorruptError(f"member {member.name}: content hashes to {digest.hexdigest()}")


def check_member(member: tarfile.TarInfo) -> str:
    """What a member is ('manifest', 'tables', 'blob', 'dir'), or UnsafeArchiveError saying why not."""
    name = member.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        why = "absolute path"
    elif ".." in re.split(r"[/\\]", name):
        why = "`..` path component"
    elif member.issym():
        why = f"symlink (to {member.linkname!r})"
    elif member.islnk():
        why = f"hard link (to {member.linkname!r})"
    elif member.ischr() or member.isblk():
        why = "device file"
    elif member.isfifo():
        why = "fifo"
    elif member.isdir():
        if BLOB_DIR_RE.fullmatch(name):
            return "dir"
        why = "unexpected folder name"
    elif not member.isreg():
        why = f"unexpected member type {member.type!r}"
    elif name == MANIFEST_NAME:
        return "manifest"
    elif name == TABLES_NAME:
        return "tables"
    elif (match := BLOB_MEMBER_RE.fullmatch(name)) and match.group(2).startswith(match.group(1)):
        return "blob"
    else:
        why = "unexpected name"
    raise UnsafeArchiveError(f"refused archive member {name!r}: {why}")


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # tar.next() and not iteration: TarFile keeps every member it has read in `members`,
    # which a library of 100k blobs would grow without bound.
    while (member := tar.next()) is not None:
        tar.members.clear()
        yield member


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise BackupCorruptError(f"member {member.name}: {member.size} bytes, more than the {limit} allowed")
    fh = tar.extractfile(member)
    if fh is None:
        raise BackupCorruptError(f"member {member.name}: no data")
    with fh:
        data = fh.read()
    if len(data) != member.size:
        raise BackupCorruptError(f"member {member.name}: truncated ({len(data)} of {member.size} bytes)")
    return data


BlobHandler = Callable[[tarfile.TarFile, tarfile.TarInfo, str, ByteProgress], None]


def _walk_archive(path: Path, progress: ByteProgress,
                  on_blob: BlobHandler | None) -> tuple[BackupManifest, bytes]:
    """One pass over the archive checking every header; `on_blob` reads each blob's data (None:
    headers only, tarfile seeks over the data)."""
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the `with tar` below
    except FileNotFoundError:
        raise StoreError(f"no such backup file: {path}") from None
    except tarfile.TarError as err:
        raise BackupCorruptError(f"{path}: not a readable tar archive ({err})") from None
    manifest: BackupManifest | None = None
    tables: bytes | None = None
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    last = "(start of archive)"
    count_total = progress.total is None  # backup_write counts its own total, writing included
    with tar:
        try:
            for index, member in enumerate(_members(tar)):
                kind = check_member(member)
                last = member.name
                if index == 0:
                    if kind != "manifest":
                        raise BackupCorruptError(f"member {member.name}: the first member must be "
                                                 f"{MANIFEST_NAME}")
                    manifest = BackupManifest.from_json(_read_small(tar, member, MANIFEST_MAX))
                    sizes = dict(manifest.blobs)
                    if count_total:
                        progress.total = sum(sizes.values())
                elif index == 1:
                    if kind != "tables":
                        raise BackupCorruptError(f"member {member.name}: the second member must be "
                                                 f"{TABLES_NAME}")
                    tables = _read_small(tar, member, TABLES_MAX)
                    if hashlib.sha256(tables).hexdigest() != manifest.tables_sha256:
                        raise BackupCorruptError(f"member {TABLES_NAME}: content does not match the "
                                                 "manifest's tables_sha256")
                    if count_total:
                        progress.total = (progress.total or 0) + len(tables)
                    if on_blob is not None:
                        progress.add(len(tables))
                elif kind == "dir":
                    continue
                elif kind != "blob":
                    raise BackupCorruptError(f"member {member.name}: appears more than once")
                else:
                    sha = member.name.rsplit("/", 1)[1]
                    if sha not in sizes:
                        raise BackupCorruptError(f"member {member.name}: not listed in the manifest")
                    if sha in seen:
                        raise BackupCorruptError(f"member {member.name}: appears more than once")
                    if member.size != sizes[sha]:
                        raise BackupCorruptError(f"member {member.name}: {member.size} bytes, the manifest "
                                                 f"says {sizes[sha]}")
                    seen.add(sha)
                    if on_blob is not None:
                        on_blob(tar, member, sha, progress)
        except (tarfile.TarError, EOFError) as err:
            raise BackupCorruptError(f"{path}: damaged after member {last} ({err})") from None
    if manifest is None:
        raise BackupCorruptError(f"{path}: empty archive, no {MANIFEST_NAME}")
    if tables is None:
        raise BackupCorruptError(f"member {TABLES_NAME}: missing")
    absent = [sha for sha in sizes if sha not in seen]
    if absent:
        raise BackupCorruptError(f"member {blob_member_name(absent[0])}: missing "
                                 f"({len(absent)} blob(s) of the manifest are not in the archive)")
    return manifest, tables
