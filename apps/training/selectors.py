"""Reads for the training pages and commands: datasets (assets of kind `dataset`), their
rows and token statistics, and staged browser uploads."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db.models import QuerySet

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.models import Asset, AssetVersion
from apps.monitoring.selectors import job_list
from apps.training.engine import dataset_prep
from audobon_site.access import UNSET

UPLOADS = "dataset-uploads"


def datasets_list(*, query: str = "", user=UNSET) -> QuerySet[Asset]:
    """Dataset assets `user` may see (default: whom the running code acts for), newest
    first."""
    qs = (asset_selectors.assets_visible(user=user).filter(trashed_at__isnull=True, kind=Asset.Kind.DATASET)
          .select_related("owner"))
    if query:
        qs = qs.filter(name__icontains=query)
    return qs.order_by("-updated_at")


def dataset_get(*, name: str, user=UNSET) -> Asset | None:
    return datasets_list(user=user).filter(name=name).first()


def dataset_version_get(*, ref: str, user=UNSET) -> AssetVersion:
    """`NAME` (the head) or `NAME@N` of a dataset; LookupError names what is missing."""
    version = asset_selectors.asset_version_get(ref=ref, user=user)
    if version.asset.kind != Asset.Kind.DATASET:
        raise LookupError(f"{ref!r} is a {version.asset.kind}, not a dataset")
    return version


def dataset_head(*, name: str, user=UNSET) -> AssetVersion | None:
    asset = asset_selectors.assets_visible(user=user).filter(name=name, kind=Asset.Kind.DATASET).first()
    if asset is None or not asset.head_number:
        return None
    return asset.versions.filter(number=asset.head_number).first()


def dataset_card(version: AssetVersion) -> dict:
    return version.metadata.get("dataset") or {}


def dataset_rows(*, version: AssetVersion, split: str = "train", limit: int = 20,
                 start: int = 0) -> list[dict]:
    """Rows `start`..`start + limit` of one split, read from the start of its file."""
    name = f"{split}.jsonl"
    if split not in dataset_prep.SPLITS or name not in version.manifest:
        return []
    rows = []
    for index, (_, row) in enumerate(dataset_prep.iter_rows(asset_services.version_file(version, name))):
        if index >= start + limit:
            break
        if index >= start:
            rows.append(row)
    return rows


def dataset_stats_reports(*, version: AssetVersion) -> list[AssetVersion]:
    """Token statistics made of this version, newest first."""
    return list(version.children.filter(asset__kind=Asset.Kind.REPORT,
                                        metadata__has_key="token_stats")
                .select_related("asset").order_by("-created_at"))


def dataset_jobs(*, user, name: str | None = None) -> list:
    """Dataset jobs the user may see (imports and statistics), newest first; with `name`,
    only those about that dataset."""
    jobs = job_list(user=user).filter(kind__in=["import_dataset", "dataset_stats"]).order_by("-created_at")
    if name is None:
        return list(jobs[:20])
    out = []
    for job in jobs[:200]:
        spec = job.spec or {}
        about = spec.get("name") or (spec.get("dataset") or "").rpartition("@")[0] or spec.get("dataset")
        if about == name:
            out.append(job)
    return out[:10]


@dataclass
class StagedUpload:
    token: str
    path: Path
    filename: str
    bytes: int


def staged_upload_get(*, token: str, user) -> StagedUpload | None:
    """A browser upload waiting for its mapping step, when `user` made it."""
    if not re.fullmatch(r"[0-9a-f]{32}", token or ""):
        return None
    folder = settings.AUDOBON_HOME / "work" / UPLOADS / token
    try:
        meta = json.loads((folder / "upload.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("owner") != getattr(user, "pk", None):
        return None
    suffix = meta.get("suffix")
    if suffix not in dataset_prep.SOURCE_KINDS:
        return None
    path = folder / f"source{suffix}"
    if not path.is_file():
        return None
    return StagedUpload(token=token, path=path, filename=str(meta.get("filename") or path.name),
                        bytes=int(meta.get("bytes") or 0))
