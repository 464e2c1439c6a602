"""Job kinds of assembly: assemble a recipe, extract a LoRA, extract components."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from apps.assembly import services
from apps.monitoring.jobkinds import job_kind


class AssembleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(min_length=1, description="the recipe's YAML text")
    name: str = Field(min_length=1, description="the asset the result becomes a version of")
    validate_result: bool = Field(default=True, description="false: skip validation, recorded on the version")
    # The plan made while validating: the worker's needs check and the run use it, so a
    # recipe is planned once at submission and once in the worker, not again for each.
    _plan: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _plannable(self):
        # Refused at submit time, with the planner's message, so nothing is queued.
        self._plan = services.recipe_plan(self.recipe)
        return self


def _needs(spec: AssembleSpec) -> dict:
    """From the plan: the merge's peak memory or validation's (one model at a time), and the
    output's disk."""
    est = spec._plan.estimate
    validation = est.validation_peak_memory_bytes if spec.validate_result else 0
    return {"memory": max(est.peak_memory_bytes, validation), "disk": est.disk_bytes, "device": "cpu"}


@job_kind(name="assemble", spec=AssembleSpec, area="assembly", label="Assemble a model", queue="heavy",
          needs=_needs)
def assemble(spec: AssembleSpec, reporter, job) -> dict:
    version, reused = services.assemble(text=spec.recipe, name=spec.name, owner=job.owner, job=job,
                                        reporter=reporter, validate_result=spec.validate_result,
                                        plan=spec._plan)
    return {"asset": version.asset.name, "version": version.number, "reused": reused}


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str
    tuned: str
    rank: int | None = Field(default=None, ge=1)
    energy: float | None = Field(default=None, gt=0, le=1)
    name: str | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of rank or energy")
        return self


@job_kind(name="extract_lora", spec=LoraSpec, area="assembly", label="Extract a LoRA", queue="heavy")
def extract_lora(spec: LoraSpec, reporter, job) -> dict:
    version = services.lora_extract(base=spec.base, tuned=spec.tuned, rank=spec.rank, energy=spec.energy,
                                    name=spec.name, owner=job.owner, job=job, reporter=reporter)
    return {"asset": version.asset.name, "version": version.number}


class ComponentsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    select: list[str] = Field(min_length=1)
    name: str | None = None


@job_kind(name="extract_components", spec=ComponentsSpec, area="assembly", label="Extract components")
def extract_components(spec: ComponentsSpec, reporter, job) -> dict:
    version = services.components_extract(model=spec.model, select=spec.select, name=spec.name,
                                          owner=job.owner, job=job, reporter=reporter)
    return {"asset": version.asset.name, "version": version.number}
