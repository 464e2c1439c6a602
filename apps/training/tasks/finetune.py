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


def _continue(job):
    from apps.training.services.finetune import finetune_continue_interrupted

    return finetune_continue_interrupted(job)


@job_kind(name="finetune", spec=FinetuneJobSpec, area="training", label="Fine-tune a model", queue="heavy",
          on_interrupted=_continue)
def finetune(spec: FinetuneJobSpec, reporter, job) -> dict:
    from apps.training.models import TrainingRun
    from apps.training.services.finetune import finetune_execute

    run = TrainingRun.objects.get(pk=spec.run)
    run.jobs.add(job)
    return finetune_execute(run=run, job=job, resume=spec.resume, reporter=reporter)
