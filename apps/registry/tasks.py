"""Job kinds of the registry: scan, import into the store, diff, demo models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from apps.monitoring.jobkinds import job_kind
from apps.registry import services
from apps.registry.models import DiscoveredModel


class ScanSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(default_factory=list, description="folders; empty: every known root")


@job_kind(name="scan_models", spec=ScanSpec, area="registry", label="Scan for models")
def scan_models(spec: ScanSpec, reporter, job) -> dict:
    return services.scan_models(paths=[Path(p) for p in spec.paths] or None, reporter=reporter,
                                owner=job.owner)


class ImportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_id: int
    link: bool = False


@job_kind(name="model_import", spec=ImportSpec, area="registry", label="Import a model into the store")
def model_import(spec: ImportSpec, reporter, job) -> dict:
    model = DiscoveredModel.objects.get(pk=spec.model_id)
    version = services.model_import(model=model, link=spec.link, reporter=reporter, job=job,
                                    owner=job.owner)
    return {"asset": version.asset.name, "version": version.number}


class DiffSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)


@job_kind(name="diff_models", spec=DiffSpec, area="registry", label="Diff two models", queue="heavy")
def diff_models(spec: DiffSpec, reporter, job) -> dict:
    version = services.models_diff(a=spec.a, b=spec.b, reporter=reporter, job=job, owner=job.owner)
    return {"asset": version.asset.name, "version": version.number}


class EmptySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")


@job_kind(name="demo_models", spec=EmptySpec, area="registry", label="Add the demo models",
          queue="heavy")
def demo_models(spec: EmptySpec, reporter, job) -> dict:
    return services.demo_models_register(reporter=reporter, owner=job.owner)


class GGUFImportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=1000, description="a .gguf file on the server")
    name: str | None = Field(default=None, max_length=200, description="asset name; default: the file's")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@job_kind(name="import_gguf", spec=GGUFImportSpec, area="registry",
          label="Import a GGUF file as a safetensors model", queue="heavy")
def import_gguf(spec: GGUFImportSpec, reporter, job) -> dict:
    version = services.gguf_import(path=Path(spec.path), name=spec.name, owner=job.owner, job=job,
                                   reporter=reporter, dtype=spec.dtype)
    return {"asset": version.asset.name, "version": version.number,
            "sha256": version.metadata["gguf"]["sha256"]}


@job_kind(name="demo_smollm2", spec=EmptySpec, area="registry",
          label="Add the SmolLM2-135M-Instruct demo model", queue="heavy")
def demo_smollm2(spec: EmptySpec, reporter, job) -> dict:
    return services.demo_smollm2_register(reporter=reporter, owner=job.owner, job=job)
