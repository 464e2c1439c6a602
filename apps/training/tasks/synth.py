"""Job kinds of training: synth (synthetic chat data, self-instruct or templates)."""

from __future__ import annotations

from pydantic import model_validator

from apps.assets import services as asset_services
from apps.monitoring.jobkinds import job_kind
from apps.training.engine.synth import SynthSpec
from apps.training.services import synth as services


class SynthJobSpec(SynthSpec):
    @model_validator(mode="after")
    def _inputs_exist(self):
        # Refused at submit time, naming the missing model or dataset, so nothing is queued.
        asset_services.asset_name_check(self.name)
        try:
            services.synth_inputs(self)
        except LookupError as exc:
            raise ValueError(str(exc).strip("'\"")) from None
        return self


@job_kind(name="synth_dataset", spec=SynthJobSpec, area="training", label="Generate synthetic data",
          queue="heavy")
def synth_dataset(spec: SynthJobSpec, reporter, job) -> dict:
    version, reused = services.synth_dataset(spec=spec, owner=job.owner, job=job, reporter=reporter)
    return {"asset": version.asset.name, "version": version.number, "reused": reused,
            "stats": version.metadata.get("synth", {}).get("stats")}
