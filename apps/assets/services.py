"""Writes to the library. Every new content goes through `asset_version_create`."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from apps.assets import search
from apps.assets.engine.errors import BlobMissingError, InPlaceChangedError, StoreError, UnsafePathError
from apps.assets.engine.paths import clean_relative, in_place_file
from apps.assets.engine.store import SHA256_RE, BlobStore, FileEntry, check_relative_path, hf_blob_sha
from apps.assets.models import Asset, AssetVersion, Backup, RecoveryPoint, Tag, Upload
from apps.monitoring.engine.reporter import NullReporter
from apps.monitoring.startup import on_startup
from audobon_site.access import Visibility

NAME_RE = re.compile(r"^[\w][\w.\-+ ]{0,199}$", re.UNICODE)
TAG_RE = re.compile(r"^[\w][\w.\-+]{0,63}$", re.UNICODE)


class AssetInputError(ValueError):
    """Bad input from a user: the message names the file, field or value."""


class QuotaExceededError(AssetInputError):
    """A version that would take its owner over AUDOBON_QUOTA_BYTES: nothing was registered."""


@cache
def _store(root: str) -> BlobStore:
    return BlobStore(Path(root))


def blob_store() -> BlobStore:
    return _store(str(settings.AUDOBON_HOME / "store"))


# --- job scratch folders --------------------------------------------------------------------

def work_dir(area: str) -> Path:
    """A new scratch folder under AUDOBON_HOME/work/<area>/ for a job of this process, named
    by its pid. Folders of processes that are gone (killed mid-job, so nothing was
    registered from them) are removed first, so a rerun starts clean."""
    import psutil

    root = settings.AUDOBON_HOME / "work" / area
    root.mkdir(parents=True, exist_ok=True)
    for path in root.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))


def work_area_clear(area: str) -> int:
    """At start-up no job is running: every scratch folder of `area` is left over."""
    root = settings.AUDOBON_HOME / "work" / area
    if not root.is_dir():
        return 0
    stale = list(root.iterdir())
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


# --- names and tags ------------------------------------------------------------------------

def asset_name_check(name: str) -> str:
    if not isinstance(name or "", str):  # a number or list from a JSON body
        raise AssetInputError(f"asset name {name!r} is not text")
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise AssetInputError(
            f"asset name {name!r} is not allowed: use letters, digits, space, . - _ + "
            "(up to 200 characters, starting with a letter or digit)")
    return name


def tags_clean(tags: Iterable[str]) -> list[str]:
    clean = []
    for tag in tags:
        tag = tag.strip().lower()
        if not tag:
            continue
        if not TAG_RE.match(tag):
            raise AssetInputError(f"tag {tag!r} is not allowed: letters, digits, . - _ + only")
        if tag not in clean:
            clean.append(tag)
    return clean


def _set_tags(asset: Asset, tags: list[str]) -> None:
    asset.tags.set([Tag.objects.get_or_create(name=t)[0] for t in tags])


# --- versions -------------------------------------------------------------------------------

def asset_name_usable(asset: Asset, *, actor) -> None:
    """A new version of an existing asset may come only from someone who may change it:
    another user's asset is never written to under its name (not even if it is shared)."""
    from audobon_site.access import can_change

    if actor is not None and not can_change(actor, asset):
        raise AssetInputError(f"the name {asset.name!r} is taken by an asset you cannot change: "
                              "choose another name")


def asset_version_create(*, name: str, kind: str, entries: list[FileEntry], owner=None,
                         metadata: dict | None = None, parents: Iterable[AssetVersion] = (),
                         created_by=None, job=None, spec: dict | None = None, message: str = "",
                         description: str | None = None, tags: Iterable[str] | None = None,
                         category: str | None = None, location: str = "",
                         visibility: str | None = None) -> AssetVersion:
    """Add a version to asset `name` (made on first use, owned by `owner`, seen by
    `visibility` or the default). Every blob must already be in the store: a version never
    points at a missing blob. With `location`, the files are referenced in place in that
    folder instead (nothing is copied). An existing asset takes a new version only from
    someone who may change it (its owner or an admin; the local command line as no one)."""
    name = asset_name_check(name)
    if kind not in Asset.Kind.values:
        raise AssetInputError(f"kind {kind!r} is not one of {', '.join(Asset.Kind.values)}")
    seen = set()
    for e in entries:
        entry_check(e.path, e.sha256, e.size, in_place=bool(location))
        if e.path in seen:
            raise AssetInputError(f"file {e.path!r} appears twice in the version")
        seen.add(e.path)
    store = blob_store()
    if location:
        if not Path(location).is_absolute():
            raise AssetInputError(f"location {location!r} is not an absolute path")
        missing = [e.path for e in entries if not _in_place_path(location, e.path).is_file()]
    else:
        missing = [e.path for e in entries if not store.has(e.sha256)]
    if missing:
        raise BlobMissingError(f"not in the store, so no version was made: {', '.join(missing[:5])}")
    clean_tags = tags_clean(tags) if tags is not None else None
    with transaction.atomic():
        asset = Asset.objects.select_for_update().filter(name=name).first()
        if asset is None:
            fields = {"visibility": visibility} if visibility else {}
            asset = Asset.objects.create(name=name, kind=kind, owner=owner or created_by, **fields)
        else:
            asset_name_usable(asset, actor=owner or created_by)
        if asset.kind != kind:
            raise AssetInputError(f"asset {name!r} is a {asset.kind}, not a {kind}")
        # Every new version passes here: its owner's quota (AUDOBON_QUOTA_BYTES, LAN mode).
        from apps.assets.storage_report import quota_check

        quota_check(owner=asset.owner, entries=[] if location else entries)
        if asset.trashed_at:
            asset.trashed_at = None
        manifest = {e.path: {"sha256": e.sha256, "size": e.size}
                    for e in sorted(entries, key=lambda e: e.path)}
        size = sum(e.size for e in entries)
        version = AssetVersion.objects.create(
            asset=asset, number=asset.head_number + 1, manifest=manifest,
            metadata=metadata or {}, created_by=created_by, job=job, spec=spec or {},
            message=message[:500], size_bytes=size, location=location,
        )
        version.parents.set(list(parents))
        asset.head_number = version.number
        asset.metadata = version.metadata
        asset.size_bytes = size
        if description is not None:
            asset.description = description
        if category is not None:
            asset.category = category
        asset.save()
        if clean_tags is not None:
            _set_tags(asset, clean_tags)
        search.index_update(asset)
    return version


def entry_check(path, sha256, size, *, in_place: bool) -> None:
    """One manifest entry as fresh input: a clean relative path (no absolute, `..` or dotfile),
    a lowercase hex sha256 of 64 digits (empty only for a file referenced in place whose
    hash is not known), and a size that is a non-negative integer."""
    try:
        clean_relative(path)
    except UnsafePathError as exc:
        raise AssetInputError(str(exc)) from None
    if not isinstance(sha256, str) or not (SHA256_RE.fullmatch(sha256) or (in_place and sha256 == "")):
        raise AssetInputError(f"file {path!r}: sha256 {sha256!r} is not 64 lowercase hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise AssetInputError(f"file {path!r}: size {size!r} is not a non-negative integer")


def asset_import(*, source: Path, kind: str, name: str | None = None, link: bool = False,
                 owner=None, tags: Iterable[str] = (), description: str | None = None,
                 parents: Iterable[AssetVersion] = (), job=None, reporter=None,
                 message: str | None = None, include=None, spec: dict | None = None,
                 metadata: dict | None = None) -> AssetVersion:
    """Ingest a file or folder into the store and register it as a new version (dotfiles
    left out; with `include`, only the relative paths it accepts). A version is made
    complete: `spec` (default: where it came from) and `metadata` (added to what the files
    show) are given here, never changed afterwards."""
    source = Path(source).expanduser()
    if not source.exists():
        raise AssetInputError(f"{source}: no such file or folder")
    name = asset_name_check(name or source.name)
    clean_tags = tags_clean(tags)
    existing = Asset.objects.filter(name=name).first()
    if existing is not None:  # refused before anything is copied
        asset_name_usable(existing, actor=owner)
    entries = blob_store().ingest_tree(source, link=link, reporter=reporter or NullReporter(),
                                       include=include)
    if not entries:
        raise AssetInputError(f"{source}: there is no file in it to import")
    return asset_version_create(
        name=name, kind=kind, entries=entries, owner=owner, created_by=owner,
        metadata={**describe_source(source, entries), **(metadata or {})}, parents=parents, job=job,
        spec=spec if spec is not None else {"source": str(source), "link": link},
        message=message or f"imported from {source}", description=description,
        tags=clean_tags or None,
    )


def describe_source(source: Path, entries: list[FileEntry]) -> dict:
    """Metadata an import can read cheaply: file count, and a model's architecture."""
    meta: dict = {"files": len(entries), "bytes": sum(e.size for e in entries)}
    config = source / "config.json" if source.is_dir() else None
    if config and config.is_file() and config.stat().st_size < 10_000_000:
        try:
            data = json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            if data.get("model_type"):
                meta["architecture"] = str(data["model_type"])
            if isinstance(data.get("architectures"), list):
                meta["architectures"] = [str(a) for a in data["architectures"][:5]]
    return meta


def version_entries(version: AssetVersion) -> list[FileEntry]:
    return [FileEntry(path=p, sha256=v["sha256"], size=v["size"]) for p, v in version.manifest.items()]


def _in_place_path(location: str, path: str) -> Path:
    try:
        return in_place_file(location, path)
    except UnsafePathError as exc:
        raise AssetInputError(str(exc)) from None


def version_file(version: AssetVersion, path: str) -> Path:
    """Where one file of a version is: its blob, or the file in the referenced folder. A
    path that is not clean, a hash that is not one, or a file of the folder that resolves
    outside it (a link leaving it) is refused with a StoreError, checked on every call."""
    entry = version.manifest[path]
    if version.location:
        return in_place_file(version.location, path)
    check_relative_path(path)
    return blob_store().blob_path(entry["sha256"])


# A file's mtime may run a little ahead of the database's clock (another machine's disk).
MTIME_SLACK_SECONDS = 2


def version_file_checked(version: AssetVersion, path: str) -> Path:
    """`version_file`, checked before it is served: a stored file's blob is there; a file
    referenced in place is still the one the scan recorded (a regular file of the recorded
    size, not modified since the version was made, and for a hub cache file still a link to
    the blob named by the recorded sha256). Otherwise InPlaceChangedError, or BlobMissingError
    when it is gone, saying what differs."""
    src = version_file(version, path)
    if not version.location:
        if not src.is_file():
            raise BlobMissingError(f"{version}: the blob of {path} is not in the store (run verify_store)")
        return src
    entry = version.manifest[path]
    try:
        st = os.stat(src)
    except OSError:
        raise BlobMissingError(f"{version} is referenced in place and its file {path} is gone "
                               "(rescan the folder)") from None
    if not stat.S_ISREG(st.st_mode):
        raise InPlaceChangedError(f"{version}: {path} is no longer a regular file (rescan the folder)")
    if st.st_size != entry["size"]:
        raise InPlaceChangedError(f"{version}: {path} changed since the scan: size {st.st_size} bytes, "
                                  f"recorded {entry['size']} (rescan the folder)")
    if entry["sha256"]:
        named = hf_blob_sha(src)
        if named is not None and named != entry["sha256"]:
            raise InPlaceChangedError(f"{version}: {path} changed since the scan: hash mismatch, it is "
                                      f"now {named}, recorded {entry['sha256']} (rescan the folder)")
    made = version.created_at.timestamp() if version.created_at else None
    if made is not None and st.st_mtime > made + MTIME_SLACK_SECONDS:
        when = datetime.fromtimestamp(st.st_mtime, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        raise InPlaceChangedError(f"{version}: {path} changed since the scan: modified at {when} UTC, "
                                  "after the version was made (rescan the folder)")
    return src


def asset_version_export(*, version: AssetVersion, dest: Path, reporter=None) -> None:
    """Write a version's files into the new folder `dest` (atomically, hashes checked). Every
    file lands inside `dest`: a manifest path that is not clean refuses the whole export."""
    dest = Path(dest)
    for path in version.manifest:
        try:
            check_relative_path(path)  # in place, version_file refuses dotfiles besides
        except StoreError as exc:
            raise AssetInputError(f"{version}: {exc}; nothing was exported") from None
    if not version.location:
        blob_store().export(version_entries(version), dest, reporter=reporter or NullReporter())
        return
    if dest.exists() or dest.is_symlink():
        raise AssetInputError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-export-", dir=dest.parent))
    try:
        for path in sorted(version.manifest):
            target = tmp / path
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise AssetInputError(f"{path!r} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                src = version_file_checked(version, path)
            except (UnsafePathError, InPlaceChangedError, BlobMissingError) as exc:
                raise AssetInputError(str(exc)) from None
            shutil.copyfile(src, target)
        if dest.exists() or dest.is_symlink():
            raise AssetInputError(f"{dest} appeared while exporting")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def asset_version_restore(*, version: AssetVersion, user=None) -> AssetVersion:
    """Make the old version current again as a new version: history is never rewritten."""
    return asset_version_create(
        name=version.asset.name, kind=version.asset.kind, entries=version_entries(version),
        metadata=version.metadata, parents=[version], created_by=user,
        spec={"restored_from": str(version.pk)}, location=version.location,
        message=f"restored from version {version.number}",
    )


def asset_update(*, asset: Asset, tags: Iterable[str] | None = None, category: str | None = None,
                 description: str | None = None) -> Asset:
    with transaction.atomic():
        if tags is not None:
            _set_tags(asset, tags_clean(tags))
        if category is not None:
            asset.category = category.strip()[:100]
        if description is not None:
            asset.description = description
        asset.save()
        search.index_update(asset)
    return asset


# --- trash ----------------------------------------------------------------------------------

def asset_trash(*, asset: Asset) -> None:
    Asset.objects.filter(pk=asset.pk).update(trashed_at=timezone.now())


def asset_untrash(*, asset: Asset) -> None:
    Asset.objects.filter(pk=asset.pk).update(trashed_at=None)


def trash_empty() -> int:
    """Delete trashed assets for good (their blobs are freed by the next gc)."""
    with transaction.atomic():
        ids = list(Asset.objects.filter(trashed_at__isnull=False).values_list("pk", flat=True))
        search.index_remove(ids)
        Asset.objects.filter(pk__in=ids).delete()
    return len(ids)


# --- recovery points ----------------------------------------------------------------------------

def recovery_point_create(*, name: str, user=None) -> RecoveryPoint:
    name = asset_name_check(name)
    if RecoveryPoint.objects.filter(name=name).exists():
        raise AssetInputError(f"a recovery point named {name!r} already exists")
    heads = {}
    for asset_id, number in Asset.objects.filter(trashed_at__isnull=True).values_list(
            "pk", "head_number"):
        version_id = AssetVersion.objects.filter(asset_id=asset_id, number=number).values_list(
            "pk", flat=True).first()
        if version_id:
            heads[str(asset_id)] = str(version_id)
    return RecoveryPoint.objects.create(name=name, heads=heads, created_by=user)


def recovery_point_restore(*, point: RecoveryPoint, user=None) -> dict:
    """Return the library to the point: assets whose head differs get a new version equal
    to the one recorded; assets made since go to the trash (nothing is deleted)."""
    restored, trashed, unchanged = [], [], 0
    with transaction.atomic():
        for asset in Asset.objects.all():
            version_id = point.heads.get(str(asset.pk))
            if version_id is None:
                if asset.trashed_at is None:
                    asset_trash(asset=asset)
                    trashed.append(asset.name)
                continue
            if asset.trashed_at is not None:
                asset_untrash(asset=asset)
            version = AssetVersion.objects.get(pk=version_id)
            head = asset.versions.get(number=asset.head_number)
            if head.manifest == version.manifest and head.metadata == version.metadata:
                unchanged += 1
                continue
            asset_version_restore(version=version, user=user)
            restored.append(asset.name)
    return {"restored": restored, "trashed": trashed, "unchanged": unchanged}


# --- store upkeep -----------------------------------------------------------------------------

def referenced_blobs() -> dict[str, int]:
    """Every blob some version points at (trashed assets included: trash is recoverable).
    Versions referenced in place have no blobs."""
    refs: dict[str, int] = {}
    for manifest in AssetVersion.objects.filter(location="").values_list(
            "manifest", flat=True).iterator():
        for entry in manifest.values():
            sha = entry.get("sha256") if isinstance(entry, dict) else None
            # A malformed hash (a row restored before they were checked) names no blob: it
            # must not stop every later backup, verify or gc.
            if isinstance(sha, str) and SHA256_RE.fullmatch(sha):
                refs[sha] = entry["size"]
    return refs


def store_verify(*, reporter=None):
    """Re-hash every referenced blob; report corrupt and missing ones and who uses them."""
    report = blob_store().verify(referenced_blobs(), reporter=reporter or NullReporter())
    bad = set(report.corrupt) | set(report.missing)
    affected = []
    if bad:
        for version in AssetVersion.objects.filter(location="").select_related("asset").iterator():
            files = [p for p, e in version.manifest.items() if e["sha256"] in bad]
            if files:
                affected.append({"version": str(version), "files": files})
    # Referenced in place: the files must still be there, at their size.
    for version in AssetVersion.objects.exclude(location="").select_related("asset").iterator():
        gone = []
        for p in version.manifest:
            try:
                version_file_checked(version, p)
            except (StoreError, OSError):
                gone.append(p)
        if gone:
            affected.append({"version": str(version), "files": gone, "location": version.location})
    return report, affected


# Jobs that put blobs in the store before their version exists: gc must not run beside them.
INGESTING_KINDS = ("asset_import", "library_restore")


def store_gc(*, execute: bool = False) -> dict:
    from apps.monitoring.models import Job

    if execute and Job.objects.filter(kind__in=INGESTING_KINDS, status=Job.Status.RUNNING).exists():
        raise AssetInputError("an import or restore is running; run gc --execute when it has finished")
    store = blob_store()
    plan = store.gc_plan(set(referenced_blobs()))
    freed = store.gc_execute(plan, referenced=set(referenced_blobs())) if execute else 0
    return {"blobs": len(plan.unreferenced), "bytes": plan.bytes, "executed": execute,
            "freed_bytes": freed}


@on_startup("temporary files of interrupted ingests removed")
def store_startup_clean() -> int:
    """Temp files of ingests killed mid-way; `audobon up` runs it before any worker starts."""
    return blob_store().clean_tmp()


# --- uploads -----------------------------------------------------------------------------------

UPLOAD_MAX_FILES = 10_000


def _uploads_root() -> Path:
    return settings.AUDOBON_HOME / "work" / "uploads"


def upload_path_check(path: str) -> str:
    p = PurePosixPath(path.replace("\\", "/"))
    if (not path or p.is_absolute() or "\0" in path
            or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)):
        raise AssetInputError(f"upload file path {path!r} is not a plain relative path "
                              "(no absolute path, `..` or dotfile)")
    return str(p)


def upload_create(*, owner, name: str, kind: str, files: list[dict]) -> Upload:
    name = asset_name_check(name)
    if kind not in Asset.Kind.values:
        raise AssetInputError(f"kind {kind!r} is not one of {', '.join(Asset.Kind.values)}")
    if not isinstance(files, list) or not files or len(files) > UPLOAD_MAX_FILES:
        raise AssetInputError(f"an upload holds 1 to {UPLOAD_MAX_FILES} files (a list of {{path, size}})")
    clean, seen = [], set()
    for f in files:
        if not isinstance(f, dict):
            raise AssetInputError(f"upload file {f!r}: an object {{path, size}}")
        path = upload_path_check(str(f.get("path", "")))
        size = f.get("size")
        if not isinstance(size, int) or size < 0:
            raise AssetInputError(f"upload file {path!r}: size must be a non-negative integer")
        if path in seen:
            raise AssetInputError(f"upload file {path!r} appears twice")
        seen.add(path)
        clean.append({"path": path, "size": size})
    upload = Upload.objects.create(owner=owner, name=name, kind=kind, files=clean)
    (_uploads_root() / str(upload.pk)).mkdir(parents=True, exist_ok=True)
    return upload


def upload_staged_path(upload: Upload, index: int) -> Path:
    return _uploads_root() / str(upload.pk) / "files" / upload.files[index]["path"]


def upload_received(upload: Upload) -> list[int]:
    sizes = []
    for i in range(len(upload.files)):
        p = upload_staged_path(upload, i)
        sizes.append(p.stat().st_size if p.exists() else 0)
    return sizes


def upload_chunk_write(*, upload: Upload, index: int, offset: int, stream, length: int) -> int:
    """Append one chunk at `offset`, which must be what was received so far (a resumed
    upload asks first). Returns the bytes now received for that file."""
    if upload.job_id:
        raise AssetInputError("this upload is already finished")
    if not 0 <= index < len(upload.files):
        raise AssetInputError(f"upload has no file number {index}")
    expected = upload.files[index]["size"]
    path = upload_staged_path(upload, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    have = path.stat().st_size if path.exists() else 0
    if offset != have:
        raise AssetInputError(f"{upload.files[index]['path']}: chunk at byte {offset}, but "
                              f"{have} bytes are there; resume from {have}")
    if have + length > expected:
        raise AssetInputError(f"{upload.files[index]['path']}: more bytes than its size {expected}")
    written = 0
    with path.open("ab") as fh:
        while written < length:
            block = stream.read(min(1 << 20, length - written))
            if not block:
                break
            fh.write(block)
            written += len(block)
    if written != length:
        # A cut-off request: keep what arrived; the client resumes from the new size.
        raise AssetInputError(f"{upload.files[index]['path']}: the chunk was cut off after "
                              f"{written} of {length} bytes; resume from {have + written}")
    return have + written


def upload_finish(*, upload: Upload, description: str = "", tags: Iterable[str] = ()):
    """All files complete: queue the import job. Nothing is registered before this."""
    from apps.monitoring.services import job_submit

    received = upload_received(upload)
    short = [f["path"] for f, got in zip(upload.files, received, strict=True) if got != f["size"]]
    if short:
        raise AssetInputError(f"not complete yet: {', '.join(short[:5])}")
    if upload.job_id:
        return upload.job
    for i, f in enumerate(upload.files):  # an empty file gets no chunk: make it, or the import misses it
        if f["size"] == 0:
            path = upload_staged_path(upload, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    job = job_submit(kind="asset_import", owner=upload.owner, spec={
        "source": str(_uploads_root() / str(upload.pk) / "files"), "kind": upload.kind,
        "name": upload.name, "description": description, "tags": tags_clean(tags),
        "upload": str(upload.pk),
    })
    Upload.objects.filter(pk=upload.pk).update(job=job)
    return job


def upload_discard(*, upload_id: str) -> None:
    shutil.rmtree(_uploads_root() / str(upload_id), ignore_errors=True)
    Upload.objects.filter(pk=upload_id).delete()


# --- backup and restore ----------------------------------------------------------------------------

BACKUP_FORMAT = 1


def _restored_visibility(visibility: str | None, group) -> dict:
    if visibility == Visibility.GROUP and group is None:
        return {"visibility": Visibility.PRIVATE}
    return {"visibility": visibility or Visibility.PRIVATE,
            "group": group if visibility == Visibility.GROUP else None}


def library_tables_dump() -> bytes:
    """The library's tables as JSON: identities, lineage and names of people (users are
    matched by username on restore; jobs are not carried)."""
    assets = []
    for a in Asset.objects.select_related("owner", "group").prefetch_related("tags").order_by("created_at"):
        assets.append({
            "id": str(a.pk), "kind": a.kind, "name": a.name, "category": a.category,
            "description": a.description, "tags": [t.name for t in a.tags.all()],
            "owner": a.owner.get_username() if a.owner else None,
            "visibility": a.visibility, "group": a.group.name if a.group else None,
            "trashed": a.trashed_at is not None, "created_at": a.created_at.isoformat(),
        })
    versions = []
    for v in AssetVersion.objects.select_related("created_by").prefetch_related("parents").order_by(
            "asset_id", "number"):
        manifest, dropped = _restorable_manifest(v)
        row = {
            "id": str(v.pk), "asset": str(v.asset_id), "number": v.number, "manifest": manifest,
            "metadata": v.metadata, "parents": [str(p.pk) for p in v.parents.all()],
            "created_by": v.created_by.get_username() if v.created_by else None,
            "spec": v.spec, "message": v.message, "created_at": v.created_at.isoformat(),
            "location": v.location,
        }
        if dropped:
            row["dropped_files"] = dropped
        versions.append(row)
    points = [{"id": str(p.pk), "name": p.name, "heads": p.heads,
               "created_at": p.created_at.isoformat()} for p in RecoveryPoint.objects.all()]
    return json.dumps({"format": BACKUP_FORMAT, "assets": assets, "versions": versions,
                       "recovery_points": points}, sort_keys=True).encode()


def _restorable_manifest(version: AssetVersion) -> tuple[dict, list[str]]:
    """The manifest entries a restore accepts (see `entry_check`), and the paths left out:
    dotfiles and malformed rows that older versions of Audobon let in. A backup Audobon writes
    always restores; what it leaves out is named in the row's `dropped_files`."""
    kept, dropped = {}, []
    for path, entry in version.manifest.items():
        try:
            if not isinstance(entry, dict):
                raise AssetInputError("not an object")
            entry_check(path, entry.get("sha256"), entry.get("size"), in_place=bool(version.location))
        except AssetInputError:
            dropped.append(path)
        else:
            kept[path] = entry
    return kept, dropped


def library_backup(*, dest: Path, job=None, reporter=None) -> Backup:
    from apps.assets.engine.archive import backup_write

    dest = Path(dest).expanduser()
    tables = library_tables_dump()
    refs = referenced_blobs()
    manifest = backup_write(dest, store=blob_store(), shas=sorted(refs), tables=tables,
                            meta={"assets": Asset.objects.count()},
                            reporter=reporter or NullReporter())
    return Backup.objects.create(direction=Backup.Direction.BACKUP, path=str(dest),
                                 blobs=len(manifest.blobs),
                                 size_bytes=sum(s for _, s in manifest.blobs),
                                 assets=Asset.objects.count(), verified=True, job=job)


BACKUP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")


def backup_name_check(name: str) -> str:
    """A backup's file name as the web gives it: a plain name (letters, digits, . _ -, not
    starting with a dot), `.tar` added when missing. Never a path."""
    name = (name or "").strip()
    if not BACKUP_NAME_RE.fullmatch(name) or ".." in name:
        raise AssetInputError(f"backup name {name!r} is not allowed: a plain file name of letters, "
                              "digits, . _ - (up to 100 characters), no folder")
    return name if name.endswith(".tar") else f"{name}.tar"


def backup_dest_for(name: str) -> Path:
    """Where a backup named from the web goes: AUDOBON_HOME/backups/<name>."""
    return Path(settings.AUDOBON_HOME) / "backups" / backup_name_check(name)


class _RowError(AssetInputError):
    pass


def _uuid_text(value, what: str) -> str:
    if not isinstance(value, str):
        _bad(f"{what} {value!r} is not a UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _RowError(f"{what} {value!r} is not a UUID") from None


def _bad(problem: str):
    raise _RowError(problem)


def _text(row: dict, key: str, limit: int, *, optional: bool = False) -> None:
    value = row.get(key)
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > limit:
        _bad(f"{key} must be text of at most {limit} characters")


# A name as the library stores it: what asset_name_check allows, and the "(2)" or "(restored)"
# the library adds itself to tell two apart. Never a "/" or "@" (URLs and NAME@VERSION refs).
STORED_NAME_RE = re.compile(r"^[\w][\w.\-+ ()]{0,199}$", re.UNICODE)


def _stored_name_check(name) -> None:
    if not isinstance(name, str) or not STORED_NAME_RE.fullmatch(name):
        _bad(f"name {name!r} is not an allowed name")


def _free_name(name: str, taken) -> str:
    """`name`, or `name (restored)`, `name (restored 2)`… the first that `taken` says is free."""
    candidate, n = name, 1
    while taken(candidate):
        suffix = " (restored)" if n == 1 else f" (restored {n})"
        candidate, n = name[:200 - len(suffix)] + suffix, n + 1
    return candidate


def _asset_row_check(row: dict) -> None:
    if row.get("kind") not in Asset.Kind.values:
        _bad(f"kind {row.get('kind')!r} is not one of {', '.join(Asset.Kind.values)}")
    _stored_name_check(row.get("name"))
    _text(row, "category", 100)
    _text(row, "description", 100_000)
    if not isinstance(row.get("tags"), list) or not all(isinstance(t, str) for t in row["tags"]):
        _bad("tags must be a list of text")
    tags_clean(row["tags"])
    _text(row, "owner", 150, optional=True)
    _text(row, "group", 150, optional=True)
    if row.get("visibility") is not None and row["visibility"] not in Visibility.values:
        _bad(f"visibility {row['visibility']!r} is not one of {', '.join(Visibility.values)}")
    if not isinstance(row.get("trashed"), bool):
        _bad("trashed must be true or false")


def _version_row_check(row: dict, asset_ids: set[str], archive_blobs: dict[str, int]) -> None:
    asset_id = _uuid_text(row.get("asset"), "asset")
    if asset_id not in asset_ids and not Asset.objects.filter(pk=asset_id).exists():
        _bad(f"asset {asset_id} is neither in the backup nor in this library")
    number = row.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number < 2**31:
        _bad(f"number {number!r} is not a positive integer")
    location = row.get("location", "")
    if not isinstance(location, str) or len(location) > 1000:
        _bad("location must be text of at most 1000 characters")
    if location:
        from apps.assets.roots import PathNotAllowedError, location_check

        try:
            location_check(location)
        except PathNotAllowedError as exc:
            _bad(f"location: {exc}")
    manifest = row.get("manifest")
    if not isinstance(manifest, dict):
        _bad("manifest must be an object")
    store = blob_store()
    for path, entry in manifest.items():
        if not isinstance(entry, dict):
            _bad(f"manifest entry {path!r} must be an object")
        entry_check(path, entry.get("sha256"), entry.get("size"), in_place=bool(location))
        sha = entry["sha256"]
        if location:
            continue
        size = archive_blobs.get(sha)
        if size is None and store.has(sha):
            size = store.blob_path(sha).stat().st_size
        if size is None:
            _bad(f"file {path!r}: blob {sha} is neither in the backup nor in this store")
        if entry["size"] != size:  # a version whose blob reads back wrong would fail every verify
            _bad(f"file {path!r}: its size {entry['size']} is not its blob's ({size} bytes)")
    for key in ("metadata", "spec"):
        if not isinstance(row.get(key, {}), dict):
            _bad(f"{key} must be an object")
    _text(row, "message", 500)
    _text(row, "created_by", 150, optional=True)
    parents = row.get("parents")
    if not isinstance(parents, list):
        _bad("parents must be a list")
    for parent in parents:
        _uuid_text(parent, "parent")


def _point_row_check(row: dict) -> None:
    _stored_name_check(row.get("name"))
    heads = row.get("heads")
    if not isinstance(heads, dict):
        _bad("heads must be an object")
    for asset_id, version_id in heads.items():
        _uuid_text(asset_id, "head asset")
        _uuid_text(version_id, "head version")


def library_tables_check(tables, *, archive_blobs: dict[str, int]) -> None:
    """Every row of a backup's tables checked like fresh input, before anything is written:
    names, kinds, tags, ids; file paths relative and clean (no absolute, `..` or dotfile),
    hashes of 64 lowercase hex digits whose blob is in the backup (or already here), sizes,
    and in-place locations inside the roots the web may read. The first bad row refuses the
    restore with AssetInputError naming its table, row number and id."""
    if not isinstance(tables, dict):
        raise AssetInputError("tables.json is not a JSON object")
    if tables.get("format") != BACKUP_FORMAT:
        raise AssetInputError(f"backup format {tables.get('format')!r} is not supported")
    checks = {"assets": _asset_row_check, "versions": None, "recovery_points": _point_row_check}
    for table in checks:
        if not isinstance(tables.get(table), list):
            raise AssetInputError(f"backup table {table!r} is missing or not a list")
    asset_ids: set[str] = set()
    for table, check in checks.items():
        ids: set[str] = set()
        for number, row in enumerate(tables[table], 1):
            row_id = row.get("id") if isinstance(row, dict) else None
            try:
                if not isinstance(row, dict):
                    _bad("not an object")
                row_uuid = _uuid_text(row.get("id"), "id")
                if row_uuid in ids:
                    _bad("id appears twice")
                ids.add(row_uuid)
                if check is None:
                    _version_row_check(row, asset_ids, archive_blobs)
                else:
                    check(row)
            except AssetInputError as exc:
                raise AssetInputError(f"backup table {table!r}, row {number} (id {row_id!r}): {exc}; "
                                      "nothing was restored") from None
        if table == "assets":
            asset_ids = ids


def _tables_parse(data: bytes, path: Path) -> dict:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise AssetInputError(f"{path}: tables.json is not valid JSON ({detail})") from None


def library_restore(*, path: Path, job=None, reporter=None) -> dict:
    """Restore a backup into this library, empty or not. Idempotent: what is already
    here (same ids) is kept; a name taken by another asset gets a ' (restored)' suffix.
    Every row is checked (`library_tables_check`) before any blob or row is written."""
    from apps.assets.engine.archive import backup_restore

    path = Path(path).expanduser()
    if not path.is_file():
        raise AssetInputError(f"{path}: no such backup file")
    checked: dict = {}

    def check(manifest, tables_bytes: bytes) -> None:
        tables = _tables_parse(tables_bytes, path)
        library_tables_check(tables, archive_blobs=dict(manifest.blobs))
        checked["tables"] = tables

    manifest, _ = backup_restore(path, store=blob_store(), reporter=reporter or NullReporter(),
                                 check=check)
    tables = checked["tables"]
    users = {u.get_username(): u for u in get_user_model().objects.all()}
    groups = {g.name: g for g in Group.objects.all()}
    added_assets = added_versions = 0
    with transaction.atomic():
        for a in tables["assets"]:
            if Asset.objects.filter(pk=a["id"]).exists():
                continue
            name = _free_name(a["name"], lambda n: Asset.objects.filter(name=n).exists())
            asset = Asset.objects.create(
                id=a["id"], kind=a["kind"], name=name, category=a["category"],
                description=a["description"], owner=users.get(a.get("owner")),  # optional
                trashed_at=timezone.now() if a["trashed"] else None,
                # Who saw it (older backups: private); a group this library lacks: private.
                **_restored_visibility(a.get("visibility"), groups.get(a.get("group") or "")),
            )
            _set_tags(asset, tags_clean(a["tags"]))
            added_assets += 1
        by_id = {}
        for v in tables["versions"]:
            if AssetVersion.objects.filter(pk=v["id"]).exists():
                continue
            asset = Asset.objects.get(pk=v["asset"])
            number = v["number"]
            if AssetVersion.objects.filter(asset=asset, number=number).exists():
                number = asset.head_number + 1  # this library went its own way meanwhile
            version = AssetVersion.objects.create(
                id=v["id"], asset=asset, number=number, manifest=v["manifest"],
                metadata=v.get("metadata", {}), created_by=users.get(v.get("created_by")),  # optional
                spec=v.get("spec", {}), message=v["message"],
                size_bytes=sum(e["size"] for e in v["manifest"].values()),
                location=v.get("location", ""),
            )
            by_id[v["id"]] = (version, v["parents"])
            if number > asset.head_number:
                asset.head_number = number
                asset.metadata = version.metadata
                asset.size_bytes = version.size_bytes
                asset.save()
            added_versions += 1
        for version, parent_ids in by_id.values():
            version.parents.set(AssetVersion.objects.filter(pk__in=parent_ids))
        for p in tables["recovery_points"]:
            if not RecoveryPoint.objects.filter(pk=p["id"]).exists():
                name = _free_name(p["name"], lambda n: RecoveryPoint.objects.filter(name=n).exists())
                RecoveryPoint.objects.create(id=p["id"], name=name, heads=p["heads"])
        for asset in Asset.objects.filter(pk__in=[a["id"] for a in tables["assets"]]):
            search.index_update(asset)
        Backup.objects.create(direction=Backup.Direction.RESTORE, path=str(path),
                              blobs=len(manifest.blobs), assets=added_assets, verified=True,
                              job=job, size_bytes=sum(s for _, s in manifest.blobs))
    return {"assets_added": added_assets, "versions_added": added_versions,
            "assets_in_backup": len(tables["assets"])}
