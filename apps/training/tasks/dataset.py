"""Job kinds of training: dataset import and token statistics. Both run on the light queue:
`datasets`, `tokenizers` and jinja2 only, never torch or transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from apps.monitoring.jobkinds import job_kind
from apps.training.engine.dataset_prep import FIELDS
from apps.training.services import dataset as services


class ImportDatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="the source file: .jsonl, .json, .csv, .parquet or .txt")
    name: str | None = None
    format: Literal["alpaca", "sharegpt", "messages", "text", "classification"] | None = None
    mapping: dict[str, str] = Field(default_factory=dict, description="{source column: field}")
    seed: int = 0
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    labels: list[str] | None = Field(default=None, description="the allowed labels (classification)")
    model: str | None = Field(default=None, description="check row lengths against this model")
    max_length: int | None = Field(default=None, ge=1)
    upload: str | None = Field(default=None, description="the staged browser upload it came from")
    source_name: str | None = Field(default=None, max_length=200)

    @field_validator("mapping")
    @classmethod
    def _fields(cls, mapping: dict[str, str]) -> dict[str, str]:
        bad = [f"{c}={t}" for c, t in mapping.items() if t not in FIELDS]
        if bad:
            raise ValueError(f"{', '.join(bad)}: a column maps to one of {', '.join(FIELDS)}")
        return mapping


@job_kind(name="import_dataset", spec=ImportDatasetSpec, area="training", label="Import a dataset")
def import_dataset(spec: ImportDatasetSpec, reporter, job) -> dict:
    version = services.dataset_import(
        source=Path(spec.path), name=spec.name, fmt=spec.format, mapping=spec.mapping, seed=spec.seed,
        validation_fraction=spec.validation_fraction, labels=spec.labels, model=spec.model,
        max_length=spec.max_length, owner=job.owner, job=job, reporter=reporter,
        source_name=spec.source_name)
    if spec.upload:
        # Imported: the staged copy has done its work. A failed import keeps it, so the
        # mapping step can be changed and submitted again.
        services.dataset_upload_discard(token=spec.upload)
    card = version.metadata.get("dataset", {})
    return {"asset": version.asset.name, "version": version.number, "version_id": str(version.pk),
            "format": card.get("format"), "task": card.get("task"), "rows": card.get("rows")}


class DatasetStatsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, description="NAME or NAME@VERSION of a dataset")
    model: str = Field(min_length=1, description="a path or library name of a model")
    max_length: int | None = Field(default=None, ge=1)


@job_kind(name="dataset_stats", spec=DatasetStatsSpec, area="training", label="Dataset token statistics")
def dataset_stats(spec: DatasetStatsSpec, reporter, job) -> dict:
    report = services.dataset_stats(dataset=spec.dataset, model=spec.model, max_length=spec.max_length,
                                    owner=job.owner, job=job, reporter=reporter)
    stats = report.metadata.get("token_stats", {})
    return {"asset": report.asset.name, "version": report.number, "all": stats.get("all"),
            "problems": len(stats.get("problems") or [])}
