"""Writes for datasets: a file imported as a `dataset` asset version (train.jsonl,
validation.jsonl, dataset.json), token statistics stored as a report asset whose parents
are the dataset version and the model, and browser uploads staged for the mapping step."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.models import Asset, AssetVersion
from apps.monitoring.engine.reporter import NullReporter
from apps.monitoring.startup import on_startup
from apps.registry import services as registry_services
from apps.training import selectors
from apps.training.engine import dataset_prep
from apps.training.engine.dataset_prep import DatasetError

UPLOADS = "dataset-uploads"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def _work_dir() -> Path:
    return asset_services.work_dir("datasets")


@on_startup("folders of interrupted dataset imports removed")
def dataset_startup_clean() -> int:
    """A killed import leaves only its work folder: nothing was registered."""
    return asset_services.work_area_clear("datasets")


def _clean_name(text: str, fallback: str) -> str:
    """`text` with what asset names may not hold replaced."""
    clean = re.sub(r"[^\w.\-+ ]", "-", text).strip(" .-+")
    return clean[:200] or fallback


def dataset_default_name(filename: str) -> str:
    """An asset name from a file name: its stem, cleaned."""
    return _clean_name(Path(filename).stem if filename else "", "dataset")


def dataset_folder(version: AssetVersion) -> Path:
    """The version's files under their names (hard links to the blobs, made once)."""
    return registry_services.version_folder(version)


def dataset_import(*, source: Path, name: str | None = None, fmt: str | None = None,
                   mapping: dict[str, str] | None = None, seed: int = 0,
                   validation_fraction: float = 0.1, owner=None, job=None,
                   parents: Iterable[AssetVersion] = (), extra_metadata: dict | None = None,
                   reporter=None, labels: Iterable[str] | None = None, model: str | None = None,
                   max_length: int | None = None, source_name: str | None = None) -> AssetVersion:
    """Read, check and register a dataset file as a version of asset `name` (default: the
    file's stem). DatasetError lists every bad row by line, and nothing is registered.
    The same rows with the same mapping return the current head version instead of a new
    one. `labels` is the allowed label set of a classification dataset; with `model` (a
    path or library name), rows longer than `max_length` (default: the model's) are bad
    rows too. `source_name` is what the card calls the source (an upload's own name)."""
    reporter = reporter or NullReporter()
    labels = list(labels) if labels is not None else None
    source = Path(source).expanduser()
    name = asset_services.asset_name_check(name or dataset_default_name(source_name or source.name))
    existing = Asset.objects.filter(name=name).first()
    if existing is not None:
        asset_services.asset_name_usable(existing, actor=owner)
        if existing.kind != Asset.Kind.DATASET:
            raise asset_services.AssetInputError(f"asset {name!r} is a {existing.kind}, not a dataset")
    tokens = None
    if model:
        try:
            model_dir, _ = registry_services.resolve_model(model)
        except registry_services.ModelRefError as exc:
            raise LookupError(str(exc)) from None
        tokens = dataset_prep.ModelTokens(model_dir)
    work = _work_dir()
    try:
        prepared = dataset_prep.prepare_dataset(
            source, work / "dataset", cache_dir=work / "cache", fmt=fmt, mapping=mapping, seed=seed,
            validation_fraction=validation_fraction, labels=labels, tokens=tokens,
            max_length=max_length, source_name=source_name, reporter=reporter)
        card = prepared.card
        head = selectors.dataset_head(name=name)
        if head is not None and head.spec.get("content_key") == prepared.key:
            reporter.log(f"the same rows and mapping as {head}: nothing new to register")
            return head
        entries = asset_services.blob_store().ingest_tree(prepared.folder, link=True, reporter=reporter)
        rows = card["rows"]
        spec = {"source": str(source), "format": fmt, "mapping": card["mapping"], "seed": seed,
                "validation_fraction": validation_fraction,
                "labels": sorted(labels) if labels is not None else None,
                "model": model, "max_length": max_length, "content_key": prepared.key}
        version = asset_services.asset_version_create(
            name=name, kind=Asset.Kind.DATASET, entries=entries, owner=owner, created_by=owner,
            metadata={**(extra_metadata or {}), "dataset": card}, parents=parents, job=job,
            spec=spec,
            message=f"imported from {card['source']['name']}: {rows['train']} train + "
                    f"{rows['validation']} validation rows ({card['format']})",
            description=None if existing else
            f"A {card['task']} dataset ({card['format']}) imported from {card['source']['name']}.")
        reporter.log(f"{version}: {rows['train']} train + {rows['validation']} validation rows")
        return version
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _model_identity(model_dir: Path, model_version: AssetVersion | None) -> str:
    if model_version is not None:
        return f"version:{model_version.pk}"
    tok = model_dir / "tokenizer.json"
    stamp = tok.stat().st_mtime_ns if tok.is_file() else 0
    return f"path:{model_dir}:{stamp}"


def dataset_stats(*, dataset: str, model: str, max_length: int | None = None, owner=None, job=None,
                  reporter=None) -> AssetVersion:
    """Token statistics of a dataset version (`NAME` or `NAME@N`) under a model's tokenizer
    and chat template: a report asset (stats.json + lengths.png) whose parents are the
    dataset version and the model's. The same dataset, model and limit return the report
    made before. tokenizers and jinja2 only: it runs on the light queue."""
    reporter = reporter or NullReporter()
    version = selectors.dataset_version_get(ref=dataset)
    try:
        model_dir, model_version = registry_services.resolve_model(model)
    except registry_services.ModelRefError as exc:
        raise LookupError(str(exc)) from None
    key = f"{version.pk}|{_model_identity(model_dir, model_version)}|{max_length}"
    done = (asset_selectors.versions_visible().filter(asset__kind=Asset.Kind.REPORT, spec__stats_key=key)
            .select_related("asset").order_by("-created_at").first())
    if done is not None:
        reporter.log(f"measured before: {done}")
        return done
    stats = dataset_prep.token_stats(dataset_folder(version), model_dir, max_length=max_length,
                                     reporter=reporter)
    stats["dataset"] = str(version)
    model_label = str(model_version) if model_version else model_dir.name
    stats["model"] = model_label
    work = _work_dir()
    try:
        (work / "stats.json").write_text(json.dumps(stats, indent=1))
        dataset_prep.length_histogram_png(stats, work / "lengths.png")
        entries = asset_services.blob_store().ingest_tree(work, link=True, reporter=reporter)
        summary = {k: v for k, v in stats.items() if k != "histogram"}
        name = _clean_name(f"{version.asset.name} v{version.number} tokens "
                           f"{model_label.replace('@', ' v')}", "token stats")
        return asset_services.asset_version_create(
            name=name, kind=Asset.Kind.REPORT, entries=entries, owner=owner, created_by=owner,
            metadata={"token_stats": summary}, job=job,
            parents=[v for v in (version, model_version) if v is not None],
            spec={"stats_key": key, "dataset": str(version), "model": model, "max_length": max_length},
            message=f"token statistics of {version} with {model_label}",
            description=f"Token lengths of {version} under {model_label}'s tokenizer.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- browser uploads: staged until the mapping step imports them -----------------------------

def _uploads_root() -> Path:
    root = settings.AUDOBON_HOME / "work" / UPLOADS
    root.mkdir(parents=True, exist_ok=True)
    return root


@on_startup("staged dataset uploads removed")
def dataset_uploads_clean() -> int:
    return asset_services.work_area_clear(UPLOADS)


def dataset_upload_stage(*, owner, filename: str, chunks: Iterable[bytes]) -> str:
    """Keep an uploaded file for the mapping step; returns its token. The browser's file name
    picks only the suffix (one of the known ones) and the default asset name: the file is
    written as `source<suffix>` in a fresh folder named by a random token."""
    suffix = Path(filename or "").suffix.lower()
    if suffix not in dataset_prep.SOURCE_KINDS:
        raise DatasetError([f"{filename!r}: a dataset is a .jsonl, .json, .csv, .parquet or .txt file"])
    token = uuid.uuid4().hex
    folder = _uploads_root() / token
    folder.mkdir()
    try:
        written = 0
        tmp = folder / f".source{suffix}.tmp"
        with tmp.open("wb") as fh:
            for chunk in chunks:
                written += len(chunk)
                if written > MAX_UPLOAD_BYTES:
                    raise DatasetError([f"{filename}: over {MAX_UPLOAD_BYTES >> 20} MB; import it "
                                        "with `audobon import_dataset PATH`"])
                fh.write(chunk)
        os.replace(tmp, folder / f"source{suffix}")
        dataset_prep.write_json_atomic(folder / "upload.json", {
            "owner": getattr(owner, "pk", None), "filename": Path(filename).name[:200],
            "suffix": suffix, "bytes": written})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return token


def dataset_upload_discard(*, token: str) -> None:
    if re.fullmatch(r"[0-9a-f]{32}", token or ""):
        shutil.rmtree(_uploads_root() / token, ignore_errors=True)


def dataset_import_submit(*, upload, owner, name: str, fmt: str | None, mapping: dict[str, str],
                          seed: int, validation_fraction: float, labels: list[str] | None):
    """Queue the import of a staged upload (the job removes it once imported)."""
    from apps.monitoring.services import job_submit

    spec = {"path": str(upload.path), "name": name, "format": fmt, "mapping": mapping, "seed": seed,
            "validation_fraction": validation_fraction, "labels": labels, "upload": upload.token,
            "source_name": upload.filename}
    return job_submit(kind="import_dataset", spec=spec, owner=owner)
