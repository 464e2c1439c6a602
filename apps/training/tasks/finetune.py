"""Job kind of fine-tuning: one run (or its resumption) in the heavy worker."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from apps.monitoring.jobkinds import job_kind
from apps.training.engine.spec import FinetuneSpec


class FinetuneJobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    finetune: FinetuneSpec
    run: int
    resume: bool = False

    @model_validator(mode="after")
    def _runs(self):
        # Refused at submit time with the message naming the key, so nothing is queued.
        from apps.training.services.finetune import finetune_inputs

        finetune_inputs(self.finetune)
        return self


def _needs(spec: FinetuneJobSpec) -> dict:
    """The header-only memory estimate of the run, on the device it will use."""
    from pathlib import Path

    from apps.training.engine.estimate import memory_estimate
    from apps.training.run_selectors import estimate_device
    from apps.training.services.finetune import finetune_inputs

    base_dir, _, _, _ = finetune_inputs(spec.finetune)
    device = estimate_device(spec.finetune)
    est = memory_estimate(spec.finetune, Path(base_dir), device=device)
    wanted = spec.finetune.device or device
    return {"memory": int(est["bytes"]), "device": wanted if wanted != "cuda" else "cuda:0"}


def _continue(job):
    from apps.training.services.finetune import finetune_continue_interrupted

    return finetune_continue_interrupted(job)


@job_kind(name="finetune", spec=FinetuneJobSpec, area="training", label="Fine-tune a model", queue="heavy",
          on_interrupted=_continue, needs=_needs)
def finetune(spec: FinetuneJobSpec, reporter, job) -> dict:
    from apps.training.models import TrainingRun
    from apps.training.services.finetune import finetune_execute

    run = TrainingRun.objects.get(pk=spec.run)
    run.jobs.add(job)
    return finetune_execute(run=run, job=job, resume=spec.resume, reporter=reporter)
