"""The content-addressed blob store: every file of every asset version, once, by sha256.

Layout under `root`:
    blobs/<sha[:2]>/<sha>   the content, read-only (0o444)
    tmp/                    files being written; renamed into blobs/ only when complete, hashed and
                            fsynced, so a killed ingest leaves temp files here and never a wrong blob
    hashcache.sqlite3       sha256 of files already seen, by inode, size and mtime (see hashcache.py)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from apps.assets.engine.errors import (
    BlobCorruptError,
    BlobMissingError,
    SourceChangedError,
    StoreError,
    StoreFullError,
)
from apps.assets.engine.hashcache import HashCache
from apps.assets.engine.hashing import hash_copy, write_all
from apps.assets.engine.progress import ByteProgress
from apps.monitoring.engine.reporter import Reporter

SHA256_RE = re.compile(r"[0-9a-f]{64}")
BLOB_MODE = 0o444
FICLONE = 0x40049409  # ioctl: share the source's extents (btrfs, xfs, bcachefs); no byte copied
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class FileEntry:
    path: str  # posix relative path inside the asset version ("model.safetensors", "sub/a.txt")
    sha256: str  # lowercase hex
    size: int


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


@dataclass
class GcPlan:
    unreferenced: list[tuple[str, int]]  # (sha256, size)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.unreferenced)


def hf_blob_sha(path: Path) -> str | None:
    """The sha256 a Hugging Face hub cache gives a file by its name, or None.

    In the hub cache `models--org--name/snapshots/<rev>/file` is a symlink to
    `../../blobs/<sha256>` for LFS files (small files are named by their git sha1, 40 hex,
    and are not matched here).
    """
    path = Path(path)
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and SHA256_RE.fullmatch(target.name):
        return target.name
    return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _what_changed(before: os.stat_result, after: os.stat_result, expected: int, read: int) -> str:
    changes = [name for name, attr in (("size", "st_size"), ("mtime", "st_mtime_ns"), ("inode", "st_ino"),
                                        ("device", "st_dev"))
               if getattr(before, attr) != getattr(after, attr)]
    if read != expected:
        changes.append(f"read {read} bytes, expected {expected}")
    return ", ".join(changes)


def fsync_dir(path: Path) -> None:
    # Makes a rename inside `path` durable; some filesystems refuse fsync on a directory.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _disk_full_raises(message: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise StoreFullError(message) from err
        raise


def check_relative_path(rel: str) -> PurePosixPath:
    """A manifest path that stays inside the folder it is written to, or StoreError."""
    path = PurePosixPath(rel)
    if (not rel or path.is_absolute() or "\\" in rel or "\0" in rel
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise StoreError(f"unsafe path in manifest: {rel!r}")
    return path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.hash_cache = HashCache(self.root / "hashcache.sqlite3")
        self._tmp_dev = os.stat(self.tmp).st_dev

    # -- lookups ------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
            raise StoreError(f"not a lowercase hex sha256: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def open_blob(self, sha256: str) -> BinaryIO:
        try:
            return open(self.blob_path(sha256), "rb")  # the caller closes it
        except FileNotFoundError:
            raise BlobMissingError(f"blob {sha256} is not in the store {self.root}") from None

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """(sha256, size) of every blob, in sha order."""
        with os.scandir(self.blobs) as it:
            fanout = sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and len(e.name) == 2)
        for prefix in fanout:
            found = []
            with os.scandir(self.blobs / prefix) as it:
                for e in it:
                    if SHA256_RE.fullmatch(e.name) and e.name.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):  # a gc running beside us
                            if e.is_file(follow_symlinks=False):
                                found.append((e.name, e.stat(follow_symlinks=False).st_size))
            yield from sorted(found)

    def usage(self) -> tuple[int, int]:
        count = total = 0
        for _, size in self.iter_blobs():
            count += 1
            total += size
        return count, total

    # -- ingest -------------------------------------------------------------------------------

    def ingest_file(self, src: Path, *, link: bool = False, reporter: Reporter | None = None,
                    rel_path: str | None = None) -> FileEntry:
        src = Path(src)
        size = self._source_stat(src).st_size
        progress = ByteProgress(reporter, size, what=f"ingest of {src}")
        entry = self._ingest_one(src, rel_path or src.name, link=link, progress=progress)
        progress.finish()
        return entry

    def ingest_tree(self, src: Path, *, link: bool = False, reporter: Reporter | None = None,
                    include: Callable[[str], bool] | None = None) -> list[FileEntry]:
        """Every regular file under `src` (or `src` itself), paths posix and relative to `src`.

        Everything is listed before anything is ingested, so a symlink leaving the folder, a
        fifo or a device stops the ingest with a StoreError naming it and nothing stored.
        Dotfiles and dot-folders are never ingested (the library holds none); with `include`,
        only the files whose relative path it accepts are.
        """
        src = Path(src)
        if not src.is_dir():
            return [self.ingest_file(src, link=link, reporter=reporter, rel_path=src.name)]
        hidden: list[str] = []
        files = self._list_tree(src, include=include, hidden=hidden)
        if hidden and reporter is not None:
            shown = ", ".join(hidden[:10]) + (f" and {len(hidden) - 10} more" if len(hidden) > 10 else "")
            reporter.log(f"not ingested (dotfiles): {shown}")
        progress = ByteProgress(reporter, sum(size for _, _, size in files), what=f"ingest of {src}")
        entries = [self._ingest_one(path, rel, link=link, progress=progress) for path, rel, _ in files]
        progress.finish()
        return entries

    def ingest_stream(self, chunks: Iterable[bytes], *, expected_sha256: str | None = None,
                      name: str = "upload") -> tuple[str, int]:
        """Store bytes that arrive in pieces (an upload, a backup member); returns (sha256, size)."""
        if expected_sha256 is not None:
            self.blob_path(expected_sha256)  # refuses a malformed one before writing anything
        fd, tmp = self._new_tmp("stream-", name)
        sha = hashlib.sha256()
        size = 0
        try:
            with _disk_full_raises(f"the disk of the store {self.root} is full (writing {name})"):
                try:
                    for chunk in chunks:
                        sha.update(chunk)
                        write_all(fd, chunk)
                        size += len(chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            digest = sha.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise BlobCorruptError(f"{name}: content hashes to {digest}, expected {expected_sha256}; "
                                       "nothing was stored")
            self._commit(tmp, digest, size, name=name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest, size

    def _new_tmp(self, prefix: str, name: str) -> tuple[int, Path]:
        with _disk_full_raises(f"the disk of the store {self.root} is full (writing {name})"):
            fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix=prefix)
        return fd, Path(tmp_name)

    def _source_stat(self, src: Path) -> os.stat_result:
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise StoreError(f"no such file: {src}") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"not a regular file: {src}")
        return st

    def _list_tree(self, root: Path, *, include: Callable[[str], bool] | None = None,
                   hidden: list[str] | None = None) -> list[tuple[Path, str, int]]:
        root_real = root.resolve()
        found: list[tuple[Path, str, int]] = []

        def walk(folder: Path, prefix: str, ancestors: tuple[Path, ...]) -> None:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it)
            for name in names:
                path, rel = folder / name, prefix + name
                if name.startswith("."):
                    if hidden is not None:
                        hidden.append(rel)
                    continue
                if include is not None and not path.is_dir() and not include(rel):
                    continue
                if path.is_symlink():
                    try:
                        target = path.resolve(strict=True)
                    except (OSError, RuntimeError):
                        raise StoreError(f"broken or looping symlink, not ingested: {path}") from None
                    inside = target == root_real or target.is_relative_to(root_real)
                    hf_blob = target.parent.name == "blobs" and SHA256_RE.fullmatch(target.name)
                    if not inside and not hf_blob:
                        raise StoreError(f"symlink leaves the folder, not ingested: {path} -> {target}")
                else:
                    target, inside = path, True
                st = os.stat(target)
                if stat.S_ISDIR(st.st_mode):
                    real = target.resolve()
                    if not inside:
                        raise StoreError(f"symlink leaves the folder, not ingested: {path} -> {target}")
                    if real in ancestors:
                        raise StoreError(f"symlink loop, not ingested: {path} -> {real}")
                    walk(path, rel + "/", (*ancestors, real))
                elif stat.S_ISREG(st.st_mode):
                    found.append((path, rel, st.st_size))
                else:
                    raise StoreError(f"not a regular file (fifo, socket or device), not ingested: {path}")

        walk(root, "", (root_real,))
        found.sort(key=lambda item: item[1])
        return found

    def _ingest_one(self, src: Path, rel: str, *, link: bool, progress: ByteProgress) -> FileEntry:
        hf_sha = hf_blob_sha(src)
        if link:
            entry = self._ingest_linked(src, rel, hf_sha=hf_sha, progress=progress)
            if entry is not None:
                return entry
        return self._ingest_copy(src, rel, expected_sha=hf_sha, progress=progress)

    def _ingest_linked(self, src: Path, rel: str, *, hf_sha: str | None,
                       progress: ByteProgress) -> FileEntry | None:
        """Ingest without copying bytes: a known hash, a reflink or a hard link.

        None when it cannot (another filesystem, links refused): the caller copies.
        """
        real = src.resolve()
        before = self._source_stat(real)
        known = hf_sha or self.hash_cache.get(before)
        if known is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.blob_path(known)).st_size == before.st_size:
                    progress.add(before.st_size)
                    self.hash_cache.put(before, known)
                    return FileEntry(rel, known, before.st_size)
                # The store's copy has another size: it is corrupt; the link below replaces it.
        if before.st_dev != self._tmp_dev:
            return None
        tmp = self._link_into_tmp(real)
        if tmp is None:
            return None
        try:
            if known is not None:
                sha, read = known, os.stat(tmp).st_size  # size checked below, content trusted
                progress.add(read)
            else:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    sha, read = hash_copy(fd, None, limit=before.st_size, progress=progress)
                finally:
                    os.close(fd)
            after = os.stat(real)
            if read != before.st_size or not _same_file(before, after):
                raise SourceChangedError(f"{src} changed while it was being ingested "
                                         f"({_what_changed(before, after, before.st_size, read)}); "
                                         "nothing was stored")
            self._commit(tmp, sha, read, name=str(src))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.hash_cache.put(after, sha)
        return FileEntry(rel, sha, read)

    def _link_into_tmp(self, real: Path) -> Path | None:
        """A reflink (own copy-on-write extents) or else a hard link (the same inode) in tmp/."""
        fd, tmp = self._new_tmp("link-", str(real))
        try:
            with open(real, "rb") as source:
                fcntl.ioctl(fd, FICLONE, source.fileno())
            os.fsync(fd)
            return tmp
        except OSError:
            pass  # ext4 and most others: no reflink
        finally:
            os.close(fd)
        tmp.unlink()
        try:
            os.link(real, tmp)  # mkstemp's name is free again; the name is still ours in practice
        except OSError:
            return None  # EXDEV, EPERM (protected_hardlinks), EMLINK...: copy instead
        return tmp

    def _ingest_copy(self, src: Path, rel: str, *, expected_sha: str | None,
                     progress: ByteProgress) -> FileEntry:
        try:
            src_fd = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"no such file: {src}") from None
        try:
            before = os.fstat(src_fd)
            if not stat.S_ISREG(before.st_mode):
                raise StoreError(f"not a regular file: {src}")
            with contextlib.suppress(OSError):
                os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            fd, tmp = self._new_tmp("ingest-", str(src))
            try:
                with _disk_full_raises(f"the disk of the store {self.root} is full (writing {src})"):
                    try:
                        sha, read = hash_copy(src_fd, fd, limit=before.st_size, progress=progress)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                after_fd, after_path = os.fstat(src_fd), os.stat(src)
                if (read != before.st_size or not _same_file(before, after_fd)
                        or not _same_file(before, after_path)):
                    changed = after_path if not _same_file(before, after_path) else after_fd
                    raise SourceChangedError(f"{src} changed while it was being ingested "
                                             f"({_what_changed(before, changed, before.st_size, read)}); "
                                             "nothing was stored")
                if expected_sha is not None and sha != expected_sha:
                    raise BlobCorruptError(f"{src} hashes to {sha}, but the Hugging Face cache names it "
                                           f"{expected_sha}; nothing was stored")
                self._commit(tmp, sha, read, name=str(src))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            os.close(src_fd)
        self.hash_cache.put(before, sha)
        return FileEntry(rel, sha, read)

    def _commit(self, tmp: Path, sha256: str, size: int, *, name: str) -> None:
        """Move a complete, fsynced temp file into blobs/ (or drop it if the blob is there)."""
        blob = self.blob_path(sha256)
        with _disk_full_raises(f"the disk of the store {self.root} is full (writing {name})"):
            blob.parent.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(blob).st_size == size:
                    tmp.unlink()  # another ingest of the same content got there first
                    return
            # For a hard link this also makes the source read-only: it is the blob now, and an
            # in-place edit through its old name would corrupt the store.
            os.chmod(tmp, BLOB_MODE)
            # No blob, or a damaged one of the wrong size: the rename replaces it atomically.
            os.rename(tmp, blob)
            fsync_dir(blob.parent)

    # -- export, verify, gc -------------------------------------------------------------------

    def export(self, entries: list[FileEntry], dest: Path, *, reporter: Reporter | None = None) -> None:
        """Write an asset version's files under `dest` (which must not exist), checking every hash.

        Built in a hidden sibling folder and renamed, so `dest` appears complete or not at all.
        """
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise StoreError(f"export destination already exists: {dest}")
        seen: set[str] = set()
        for entry in entries:
            check_relative_path(entry.path)
            if entry.path in seen:
                raise StoreError(f"path listed twice in manifest: {entry.path}")
            seen.add(entry.path)
            if not self.has(entry.sha256):
                raise BlobMissingError(f"blob {entry.sha256} (for {entry.path}) is not in the store "
                                       f"{self.root}")
        full = f"the disk holding {dest.parent} is full (exporting to {dest.name})"
        with _disk_full_raises(full):
            dest.parent.mkdir(parents=True, exist_ok=True)
            work = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(4)}"
            work.mkdir()  # not mkdtemp: the folder keeps the umask's mode once renamed
        progress = ByteProgress(reporter, sum(e.size for e in entries), what=f"export to {dest}")
        try:
            for entry in entries:
                target = work / entry.path
                with _disk_full_raises(full):
                    target.parent.mkdir(parents=True, exist_ok=True)
                self._export_one(entry, target, progress)
            if dest.exists() or dest.is_symlink():
                raise StoreError(f"export destination appeared while exporting: {dest}")
            os.rename(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        fsync_dir(dest.parent)
        progress.finish()

    def _export_one(self, entry: FileEntry, target: Path, progress: ByteProgress) -> None:
        try:
            src_fd = os.open(self.blob_path(entry.sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobMissingError(f"blob {entry.sha256} (for {entry.path}) is not in the store "
                                   f"{self.root}") from None
        try:
            with _disk_full_raises(f"the disk holding {target.parent} is full (writing {entry.path})"):
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    sha, read = hash_copy(src_fd, fd, limit=entry.size, progress=progress)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            os.close(src_fd)
        if sha != entry.sha256 or read != entry.size:
            raise BlobCorruptError(f"blob {entry.sha256} (for {entry.path}) is corrupt: it hashes to {sha}, "
                                   f"{read} bytes (expected {entry.size})")

    def verify(self, expected: dict[str, int] | None = None, *,
               reporter: Reporter | None = None) -> VerifyReport:
        """Re-hash every blob (or exactly the `expected` {sha256: size}, missing ones reported)."""
        items = list(self.iter_blobs()) if expected is None else sorted(expected.items())
        report = VerifyReport()
        progress = ByteProgress(reporter, sum(size for _, size in items), what="verify")
        for sha, size in items:
            try:
                fd = os.open(self.blob_path(sha), os.O_RDONLY)
            except FileNotFoundError:
                report.missing.append(sha)
                continue
            try:
                got, read = hash_copy(fd, None, limit=size, progress=progress)
            finally:
                os.close(fd)
            report.checked += 1
            report.bytes += read
            if got != sha or read != size:
                report.corrupt.append(sha)
        progress.finish()
        return report

    def gc_plan(self, referenced: set[str]) -> GcPlan:
        return GcPlan([(sha, size) for sha, size in self.iter_blobs() if sha not in referenced])

    def gc_execute(self, plan: GcPlan, *, referenced: set[str]) -> int:
        """Delete the plan's blobs except those referenced by now; returns the bytes freed."""
        freed = 0
        for sha, _ in plan.unreferenced:
            if sha in referenced:
                continue
            blob = self.blob_path(sha)
            with contextlib.suppress(FileNotFoundError):
                size = os.stat(blob).st_size
                blob.unlink()
                freed += size
        return freed

    def clean_tmp(self) -> int:
        """Remove what killed ingests left in tmp/; only safe when no ingest is running."""
        removed = 0
        with os.scandir(self.tmp) as it:
            leftovers = list(it)
        for entry in leftovers:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed += 1
        return removed
