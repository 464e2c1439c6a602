"""What the library's storage holds and what can be freed, for the storage page and the
`audobon cache` command: usage by kind, by asset and by owner (against the per-user quota),
the caches (the heavy workers' model caches, assembly's result cache, thumbnails, the hash
cache) with their sizes and hit rates, and cleanup suggestions each with the bytes it frees.

Bytes are counted once per blob: two versions (or two assets) that hold the same file use
its bytes once; a folder referenced in place takes no room in the store and is listed apart.

Reads first; the few writes at the end (clearing a cache, running a suggestion) are what the
page's buttons and `audobon cache clear` call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count

from apps.assets.engine import previews
from apps.assets.engine.paths import SHA256_HEX
from apps.assets.models import Asset, AssetVersion

ENV_QUOTA = "AUDOBON_QUOTA_BYTES"
CACHE_NAMES = ("models", "assembly", "thumbs", "hashes")
CLEANUP_NAMES = ("checkpoints", "blobs", "thumbs", "trash")


class QuotaConfigError(ValueError):
    """AUDOBON_QUOTA_BYTES is not a number of bytes."""


def quota_bytes() -> int | None:
    """The per-user quota (`AUDOBON_QUOTA_BYTES`, bytes), or None when there is none."""
    raw = os.environ.get(ENV_QUOTA, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise QuotaConfigError(f"{ENV_QUOTA}={raw!r} is not a whole number of bytes (unset it for no quota)")
    return int(raw)


# --- usage ------------------------------------------------------------------------------------

@dataclass
class Usage:
    """Store bytes (unique blobs) by kind, asset and owner, in one pass over the manifests."""

    total: int = 0
    in_place: int = 0  # bytes of folders referenced in place (not in the store)
    by_kind: dict[str, int] = field(default_factory=dict)
    by_asset: dict[str, int] = field(default_factory=dict)  # asset id -> bytes
    by_owner: dict[int | None, int] = field(default_factory=dict)
    trash_only: int = 0  # blobs that only trashed assets hold: freed by emptying the trash + gc
    trash_blobs: int = 0


def _blobs(manifest) -> list[tuple[str, int]]:
    out = []
    for entry in (manifest or {}).values():
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if isinstance(sha, str) and SHA256_HEX.fullmatch(sha):
            out.append((sha, int(entry.get("size") or 0)))
    return out


def usage_compute(*, owner_id: int | None = None, only_owner: bool = False) -> Usage:
    """Unique blob bytes per kind, asset and owner (trashed assets included: the trash is
    recoverable). With `only_owner`, only the versions of `owner_id`'s assets are read."""
    rows = AssetVersion.objects.values_list("asset_id", "asset__kind", "asset__owner_id",
                                            "asset__trashed_at", "location", "size_bytes", "manifest")
    if only_owner:
        rows = rows.filter(asset__owner_id=owner_id)
    sizes: dict[str, int] = {}
    kind_sets, asset_sets, owner_sets = defaultdict(set), defaultdict(set), defaultdict(set)
    live, trashed = set(), set()
    usage = Usage()
    for asset_id, kind, owner, trashed_at, location, size, manifest in rows.iterator():
        if location:
            usage.in_place += size or 0
            continue
        for sha, n in _blobs(manifest):
            sizes[sha] = n
            kind_sets[kind].add(sha)
            asset_sets[str(asset_id)].add(sha)
            owner_sets[owner].add(sha)
            (trashed if trashed_at else live).add(sha)
    usage.total = sum(sizes.values())
    usage.by_kind = {k: sum(sizes[s] for s in v) for k, v in kind_sets.items()}
    usage.by_asset = {k: sum(sizes[s] for s in v) for k, v in asset_sets.items()}
    usage.by_owner = {k: sum(sizes[s] for s in v) for k, v in owner_sets.items()}
    only_trash = trashed - live
    usage.trash_only, usage.trash_blobs = sum(sizes[s] for s in only_trash), len(only_trash)
    return usage


def owner_blobs(owner_id: int) -> dict[str, int]:
    """{sha256: size} of every blob the versions of `owner_id`'s assets hold."""
    out: dict[str, int] = {}
    for manifest in AssetVersion.objects.filter(asset__owner_id=owner_id, location="").values_list(
            "manifest", flat=True).iterator():
        out.update(_blobs(manifest))
    return out


def quota_check(*, owner, entries) -> None:
    """Refuse (QuotaExceededError, from services) a version whose new blobs would take
    `owner` over the quota; its message names the owner, the usage and the quota."""
    from apps.assets.services import QuotaExceededError

    quota = quota_bytes()
    if quota is None or owner is None:
        return
    held = owner_blobs(owner.pk)
    used = sum(held.values())
    new = {e.sha256: e.size for e in entries if e.sha256 and e.sha256 not in held}
    adds = sum(new.values())
    if adds and used + adds > quota:
        raise QuotaExceededError(
            f"quota: {owner.get_username()} uses {_size(used)} ({used} bytes) of their {_size(quota)} "
            f"({quota} bytes) quota and this version adds {_size(adds)} ({adds} bytes); nothing was "
            f"registered. Free space (empty the trash, then gc) or ask an admin to raise {ENV_QUOTA}.")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def storage_report(*, top: int = 20, usage: Usage | None = None, user=None) -> dict:
    """Usage by kind, the `top` assets and every owner (with the quota), for the page. With
    a `user` who is not an admin: only their own assets and their own row."""
    from audobon_site.access import is_admin

    usage = usage or usage_compute()
    mine = user is not None and not is_admin(user)
    if mine:
        own = set(map(str, Asset.objects.filter(owner_id=user.pk).values_list("pk", flat=True)))
        usage = Usage(**{**usage.__dict__, "by_asset": {k: v for k, v in usage.by_asset.items() if k in own},
                         "by_owner": {k: v for k, v in usage.by_owner.items() if k == user.pk}})
    counts = dict(Asset.objects.values_list("kind").annotate(n=Count("id")))
    by_kind = sorted(({"kind": k, "assets": counts.get(k, 0), "bytes": b} for k, b in usage.by_kind.items()),
                     key=lambda r: -r["bytes"])
    top_ids = sorted(usage.by_asset, key=lambda a: -usage.by_asset[a])[:top]
    assets = {str(a.pk): a for a in Asset.objects.filter(pk__in=top_ids).select_related("owner")}
    by_asset = [{"name": assets[i].name, "kind": assets[i].kind, "bytes": usage.by_asset[i],
                 "owner": assets[i].owner.get_username() if assets[i].owner else None,
                 "trashed": bool(assets[i].trashed_at)} for i in top_ids if i in assets]
    quota = quota_bytes()
    users = {u.pk: u.get_username() for u in get_user_model().objects.filter(pk__in=[
        k for k in usage.by_owner if k is not None])}
    by_owner = sorted(({"owner": users.get(k, "(nobody)") if k is not None else "(nobody)", "bytes": b,
                        "quota": quota if k is not None else None,
                        "percent": round(100 * b / quota, 1) if quota and k is not None else None,
                        "over": bool(quota and k is not None and b > quota)}
                       for k, b in usage.by_owner.items()), key=lambda r: -r["bytes"])
    return {"total": usage.total, "in_place": usage.in_place, "by_kind": by_kind, "by_asset": by_asset,
            "by_owner": by_owner, "quota": quota,
            "trash": {"bytes": usage.trash_only, "blobs": usage.trash_blobs,
                      "assets": Asset.objects.filter(trashed_at__isnull=False).count()}}


# --- caches -----------------------------------------------------------------------------------

def _home() -> Path:
    return Path(settings.AUDOBON_HOME)


def model_stats_dir() -> Path:
    return _home() / "cache" / "models"


def thumbs_dir() -> Path:
    return _home() / "cache" / "thumbs"


def hash_cache_path() -> Path:
    from apps.assets.services import blob_store

    return blob_store().root / "hashcache.sqlite3"


def _valid_thumb_keys() -> set[str]:
    """The keys (`apps.assets.views.thumbnail`) of every image file some version still holds:
    its sha256, or for a file referenced in place without one, a hash of where and when."""
    keys = set()
    for location, manifest in AssetVersion.objects.values_list("location", "manifest").iterator():
        for path, entry in (manifest or {}).items():
            if previews.preview_kind(path) != "image" or not isinstance(entry, dict):
                continue
            if entry.get("sha256"):
                keys.add(entry["sha256"])
            elif location:
                src = Path(location) / path
                with contextlib.suppress(OSError):
                    keys.add(hashlib.sha256(f"{src}:{src.stat().st_mtime_ns}".encode()).hexdigest())
    return keys


def thumbs_scan() -> dict:
    """{"files", "bytes", "stale": [paths], "stale_bytes"}: thumbnails whose image no version
    holds any more are stale."""
    folder = thumbs_dir()
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    valid = _valid_thumb_keys() if files else set()
    total, stale, stale_bytes = 0, [], 0
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        total += size
        if path.name.rsplit("-", 1)[0] not in valid:
            stale.append(path)
            stale_bytes += size
    return {"files": len(files), "bytes": total, "stale": stale, "stale_bytes": stale_bytes}


def _hash_cache_stats() -> dict:
    path = hash_cache_path()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()) \
        if path.parent.is_dir() else 0
    entries = None
    if path.is_file():
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                entries = db.execute("SELECT count(*) FROM file_hash").fetchone()[0]
            finally:
                db.close()
    return {"entries": entries or 0, "bytes": size}


def _assembly_marker() -> Path:
    return _home() / "cache" / "assembly-cleared-at"


def assembly_cache_since():
    """When the assembly result cache was last cleared (None: never). Versions are immutable,
    so a clear does not touch them: results made before it are simply not reused."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(_assembly_marker().read_text().strip())
    except (OSError, ValueError):
        return None


def assembly_cached():
    """The versions a rerun of the same recipe over the same inputs may return."""
    cached = AssetVersion.objects.filter(spec__has_key="cache_key", asset__kind="model",
                                         asset__trashed_at__isnull=True)
    since = assembly_cache_since()
    return cached.filter(created_at__gt=since) if since else cached


def _assembly_stats() -> dict:
    from apps.monitoring.models import Job

    cached = assembly_cached()
    row = {"entries": cached.count(), "bytes": sum(cached.values_list("size_bytes", flat=True))}
    # A hit is an assemble job that returned the version made before (result "reused").
    hits = misses = 0
    for result in Job.objects.filter(kind="assemble", status=Job.Status.SUCCEEDED).values_list(
            "result", flat=True).iterator():
        if isinstance(result, dict) and "reused" in result:
            hits += bool(result["reused"])
            misses += not result["reused"]
    return {**row, "hits": hits, "misses": misses}


def caches_report(*, thumbs: dict | None = None) -> list[dict]:
    """One row per cache: name, title, entries, bytes, hits, misses, hit_rate (None where
    not counted), and what clearing it does."""
    from apps.monitoring.engine.modelcache import stats_read

    workers = stats_read(model_stats_dir())
    models = {"name": "models", "title": "Model cache (heavy workers)",
              "entries": sum(w.get("entries", 0) for w in workers),
              "bytes": sum(w.get("bytes", 0) for w in workers),
              "hits": sum(w.get("hits", 0) for w in workers),
              "misses": sum(w.get("misses", 0) for w in workers),
              "budget": sum(w.get("budget", 0) for w in workers),
              "workers": workers,
              "clears": "the running heavy workers drop their loaded models (within a few seconds)"}
    assembly = {"name": "assembly", "title": "Assembly results (same recipe, same inputs)",
                **_assembly_stats(),
                "clears": "the next run of each recipe merges again (the models stay in the library)"}
    thumbs = thumbs or thumbs_scan()
    thumb_row = {"name": "thumbs", "title": "Thumbnails", "entries": thumbs["files"],
                 "bytes": thumbs["bytes"], "stale": len(thumbs["stale"]),
                 "stale_bytes": thumbs["stale_bytes"], "hits": None, "misses": None,
                 "clears": "every thumbnail; each is made again when next shown"}
    hashes = {"name": "hashes", "title": "File hash cache (imports)", **_hash_cache_stats(), "hits": None,
              "misses": None, "clears": "known hashes; the next import of a folder reads its files again"}
    rows = [models, assembly, thumb_row, hashes]
    for row in rows:
        looked = (row["hits"] or 0) + (row["misses"] or 0)
        row["hit_rate"] = round(row["hits"] / looked, 4) if row["hits"] is not None and looked else None
    return rows


# --- cleanup suggestions ----------------------------------------------------------------------

def cleanup_suggestions(*, usage: Usage | None = None, thumbs: dict | None = None) -> list[dict]:
    """What can be freed now, each with its bytes, the command and the page's action."""
    from apps.assets.services import blob_store, referenced_blobs

    out = []
    checkpoints = _prunable_checkpoints()
    out.append({"name": "checkpoints", "title": "Checkpoints of finished training runs",
                "bytes": sum(i["bytes"] for i in checkpoints), "count": len(checkpoints), "unit": "runs",
                "command": "audobon runs prune --execute"})
    plan = blob_store().gc_plan(set(referenced_blobs()))
    out.append({"name": "blobs", "title": "Blobs no version points at", "bytes": plan.bytes,
                "count": len(plan.unreferenced), "unit": "blobs", "command": "audobon gc --execute"})
    thumbs = thumbs or thumbs_scan()
    out.append({"name": "thumbs", "title": "Thumbnails of images no version holds",
                "bytes": thumbs["stale_bytes"], "count": len(thumbs["stale"]), "unit": "files",
                "command": "audobon cache clear thumbs --stale"})
    usage = usage or usage_compute()
    trashed = Asset.objects.filter(trashed_at__isnull=False).count()
    out.append({"name": "trash", "title": "Assets in the trash (freed by the next gc)",
                "bytes": usage.trash_only, "count": trashed, "unit": "assets",
                "command": "audobon trash empty && audobon gc --execute"})
    return out


def storage_page(*, user) -> dict:
    """What the storage page shows beside the store: `report` (usage; an admin sees every
    asset and owner, anyone else their own), `caches`, and for admins `cleanup`."""
    from audobon_site.access import is_admin

    usage = usage_compute()
    thumbs = thumbs_scan()
    out = {"report": storage_report(usage=usage, user=user), "is_admin": is_admin(user),
           "caches": caches_report(thumbs=thumbs)}
    if out["is_admin"]:
        out["cleanup"] = cleanup_suggestions(usage=usage, thumbs=thumbs)
    return out


def _prunable_checkpoints() -> list[dict]:
    # Training builds on assets; the storage page is the one place that lists its checkpoints.
    from apps.training.services.finetune import checkpoints_prunable

    return checkpoints_prunable()


# --- writes: clear a cache, run a suggestion ----------------------------------------------------

def cache_clear(*, name: str, stale_only: bool = False) -> dict:
    """Clear cache `name` (one of CACHE_NAMES). Returns {"cache", "entries", "bytes"}: what
    was dropped (for the model cache: what the workers held when asked)."""
    if name not in CACHE_NAMES:
        raise ValueError(f"no cache named {name!r}; the caches are {', '.join(CACHE_NAMES)}")
    if stale_only and name != "thumbs":
        raise ValueError("--stale applies to thumbs only")
    if name == "models":
        from apps.monitoring.engine.modelcache import request_clear, stats_read

        workers = stats_read(model_stats_dir())
        request_clear(model_stats_dir())
        return {"cache": name, "entries": sum(w.get("entries", 0) for w in workers),
                "bytes": sum(w.get("bytes", 0) for w in workers), "workers": len(workers)}
    if name == "assembly":
        # The result versions stay as they are (immutable); from now on a rerun ignores
        # every result made before this moment and assembles again.
        from django.utils import timezone

        cached = assembly_cached()
        entries, total = cached.count(), sum(cached.values_list("size_bytes", flat=True))
        marker = _assembly_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(timezone.now().isoformat())
        os.replace(tmp, marker)
        return {"cache": name, "entries": entries, "bytes": total}
    if name == "thumbs":
        folder = thumbs_dir()
        every = sorted(folder.glob("*.png")) if folder.is_dir() else []
        victims = thumbs_scan()["stale"] if stale_only else every
        entries = total = 0
        for path in victims:
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                entries += 1
                total += size
        return {"cache": name, "entries": entries, "bytes": total, "stale_only": stale_only}
    stats = _hash_cache_stats()
    path = hash_cache_path()
    if path.is_file():
        db = sqlite3.connect(path, timeout=30)
        try:
            with db:
                db.execute("DELETE FROM file_hash")
            db.execute("VACUUM")
        finally:
            db.close()
    return {"cache": name, "entries": stats["entries"], "bytes": stats["bytes"]}


def cleanup_run(*, name: str, owner=None) -> dict:
    """Run suggestion `name` (one of CLEANUP_NAMES): {"name", "bytes" freed or to be freed,
    "job" when it runs as a job}."""
    from apps.assets import services

    if name == "checkpoints":
        from apps.training.services.finetune import checkpoints_prune

        done = checkpoints_prune()
        return {"name": name, "bytes": done["bytes"], "runs": done["runs"]}
    if name == "blobs":
        from apps.monitoring.services import job_submit

        job = job_submit(kind="store_gc", spec={"execute": True}, owner=owner)
        return {"name": name, "job": job.pk, "bytes": None}
    if name == "thumbs":
        done = cache_clear(name="thumbs", stale_only=True)
        return {"name": name, "bytes": done["bytes"], "files": done["entries"]}
    if name == "trash":
        from apps.monitoring.services import job_submit

        freed = usage_compute().trash_only
        assets = services.trash_empty()
        job = job_submit(kind="store_gc", spec={"execute": True}, owner=owner)
        return {"name": name, "assets": assets, "bytes": freed, "job": job.pk}
    raise ValueError(f"no cleanup named {name!r}; they are {', '.join(CLEANUP_NAMES)}")
