"""Job kinds of the library: import, backup, restore, verify, gc."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from apps.assets import services
from apps.assets.models import Asset, Upload
from apps.monitoring.jobkinds import job_kind


class ImportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    kind: Asset.Kind
    name: str | None = None
    link: bool = False
    description: str | None = None
    tags: list[str] = []
    upload: str | None = Field(default=None, description="the browser upload it came from")


@job_kind(name="asset_import", spec=ImportSpec, area="assets", label="Import into the library")
def asset_import(spec: ImportSpec, reporter, job) -> dict:
    try:
        version = services.asset_import(
            # A browser upload is staged on the store's filesystem and dropped afterwards:
            # linking it in saves writing every byte a second time.
            source=Path(spec.source), kind=spec.kind, name=spec.name,
            link=spec.link or bool(spec.upload),
            owner=job.owner, tags=spec.tags, description=spec.description, job=job,
            reporter=reporter,
            message="uploaded in the browser" if spec.upload else None,
        )
    finally:
        if spec.upload:
            # The staged copy is in the store now (or the job failed and the user retries
            # the upload): either way it is not kept.
            shutil.rmtree(Path(spec.source).parent, ignore_errors=True)
            Upload.objects.filter(pk=spec.upload).delete()
    reporter.log(f"{version} holds {len(version.manifest)} files, {version.size_bytes} bytes")
    return {"asset": version.asset.name, "version": version.number, "version_id": str(version.pk)}


class BackupSpec(BaseModel):
    """A backup job names its file; it is written to AUDOBON_HOME/backups/<name>, never to a
    path given with the job (`audobon backup FILE` writes anywhere, without a job)."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=104, description="a plain file name, .tar added")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return services.backup_name_check(value)


@job_kind(name="library_backup", spec=BackupSpec, area="assets", label="Back up the library")
def library_backup(spec: BackupSpec, reporter, job) -> dict:
    backup = services.library_backup(dest=services.backup_dest_for(spec.name), job=job, reporter=reporter)
    return {"path": backup.path, "blobs": backup.blobs, "bytes": backup.size_bytes}


class RestoreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)


@job_kind(name="library_restore", spec=RestoreSpec, area="assets", label="Restore a backup")
def library_restore(spec: RestoreSpec, reporter, job) -> dict:
    return services.library_restore(path=Path(spec.path), job=job, reporter=reporter)


class EmptySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")


@job_kind(name="store_verify", spec=EmptySpec, area="assets", label="Verify the store")
def store_verify(spec: EmptySpec, reporter, job) -> dict:
    report, affected = services.store_verify(reporter=reporter)
    if not report.ok or affected:
        raise RuntimeError(f"store damaged: {len(report.corrupt)} corrupt, "
                           f"{len(report.missing)} missing blobs; affected {affected[:10]}")
    return {"checked": report.checked, "bytes": report.bytes}


class GcSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    execute: bool = False


@job_kind(name="store_gc", spec=GcSpec, area="assets", label="Free unreferenced blobs")
def store_gc(spec: GcSpec, reporter, job) -> dict:
    return services.store_gc(execute=spec.execute)
