"""Writes of "Try it": a heavy job that answers one prompt with a run's base and tuned model."""

from __future__ import annotations

from pathlib import Path

from apps.monitoring.models import Job
from apps.monitoring.services import JobStateError, job_submit
from apps.registry import services as registry_services
from apps.training.models import TrainingRun

TRY_IT_DEFAULT_TOKENS = 64


def try_it_inputs(run: TrainingRun) -> tuple[Path, Path, str]:
    """(base folder, tuned folder, "adapter" or "model"); JobStateError when the run has
    nothing to try yet."""
    if (run.spec or {}).get("task", "causal_lm") != "causal_lm":
        raise JobStateError(f"run {run.pk} is a {run.spec.get('task')} run; only a causal LM generates text")
    if run.result is None:
        raise JobStateError(f"run {run.pk} has no result yet; try it once it has finished")
    if run.base is not None:
        base_dir = registry_services.version_folder(run.base)
    else:
        try:
            base_dir, _ = registry_services.resolve_model(run.spec["base_model"])
        except LookupError as exc:
            raise JobStateError(f"run {run.pk}: its base model is gone: {exc}") from None
    tuned_kind = "adapter" if run.result.asset.kind == "adapter" else "model"
    return base_dir, registry_services.version_folder(run.result), tuned_kind


def try_it_submit(*, run: TrainingRun, prompt: str, owner=None,
                  max_new_tokens: int = TRY_IT_DEFAULT_TOKENS, enqueue: bool = True) -> Job:
    """Queue one "Try it" generation; a run without a result is refused before anything is queued."""
    from apps.training.engine.finetune import storable

    try_it_inputs(run)
    return job_submit(kind="try_it", spec={"run": run.pk, "prompt": storable(prompt),
                                           "max_new_tokens": max_new_tokens},
                      owner=owner, enqueue=enqueue)


def try_it_execute(*, run: TrainingRun, prompt: str, max_new_tokens: int, reporter=None) -> dict:
    from apps.training.engine.try_it import try_it

    base_dir, tuned_dir, tuned_kind = try_it_inputs(run)
    result = try_it(base_dir=base_dir, tuned_dir=tuned_dir, tuned_kind=tuned_kind, prompt=prompt,
                    max_new_tokens=max_new_tokens, device=(run.spec or {}).get("device"), reporter=reporter)
    return {**result, "run": run.pk, "tuned_ref": str(run.result)}
