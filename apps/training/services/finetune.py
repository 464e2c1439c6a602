"""Writes of fine-tuning: runs, their jobs (first and resumed), and the results they register
in the library with lineage to the base model version, the dataset version and the spec."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.models import Asset, AssetVersion
from apps.monitoring.engine.reporter import NullReporter
from apps.monitoring.models import Job
from apps.monitoring.services import JobStateError, job_submit
from apps.registry import services as registry_services
from apps.training.engine.spec import FinetuneSpec, FinetuneSpecError, spec_parse
from apps.training.models import TrainingRun

RESUMABLE = (Job.Status.FAILED, Job.Status.CANCELLED, Job.Status.INTERRUPTED)
# A run whose worker keeps dying (killed for memory, say) is not continued for ever.
AUTO_RESUME_LIMIT = 3


def runs_root() -> Path:
    return settings.AUDOBON_HOME / "runs"


def run_dir(run: TrainingRun) -> Path:
    return runs_root() / str(run.pk)


def _lm_or_encoder(config: dict) -> str:
    archs = " ".join(config.get("architectures") or [])
    if any(k in archs for k in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return "causal_lm"
    return "encoder"


def finetune_inputs(spec: FinetuneSpec) -> tuple[Path, AssetVersion | None, Path, AssetVersion]:
    """The base model's folder and version, the dataset's folder and version; header-only
    checks that the pair can run. FinetuneSpecError names what is wrong."""
    from apps.registry.engine.model import read_model

    try:
        base_dir, base_version = registry_services.resolve_model(spec.base_model)
    except LookupError as exc:
        raise FinetuneSpecError(f"base_model: {exc}") from None
    if base_version is not None and base_version.asset.kind != Asset.Kind.MODEL:
        raise FinetuneSpecError(f"base_model: {spec.base_model} is a {base_version.asset.kind}, not a model")
    try:
        files = read_model(base_dir)
    except (OSError, ValueError) as exc:
        raise FinetuneSpecError(f"base_model: {spec.base_model}: {exc}") from None
    if not files.config:
        raise FinetuneSpecError(f"base_model: {spec.base_model} has no config.json")
    if spec.task == "causal_lm" and _lm_or_encoder(files.config) != "causal_lm":
        raise FinetuneSpecError(f"task: {spec.base_model} is not a causal language model "
                                f"({', '.join(files.config.get('architectures') or ['no architectures'])}); "
                                "use task: classification")
    max_positions = files.config.get("max_position_embeddings") or files.config.get("n_positions")
    if spec.max_length and isinstance(max_positions, int) and spec.max_length > max_positions:
        raise FinetuneSpecError(f"max_length: {spec.max_length} is above {spec.base_model}'s maximum of "
                                f"{max_positions} tokens")
    try:
        dataset_version = asset_selectors.asset_version_get(ref=spec.dataset)
    except LookupError as exc:
        raise FinetuneSpecError(f"dataset: {exc}") from None
    if dataset_version.asset.kind != Asset.Kind.DATASET:
        raise FinetuneSpecError(f"dataset: {spec.dataset} is a {dataset_version.asset.kind}, not a dataset")
    if "dataset.json" not in dataset_version.manifest:
        raise FinetuneSpecError(f"dataset: {spec.dataset} was not imported as a dataset "
                                "(no dataset.json); import it with `audobon import_dataset`")
    if spec.lora.target_modules and spec.method != "full":
        from apps.training.engine.estimate import lora_trainable

        _, available = lora_trainable(base_dir, None, 1)
        missing = [t for t in spec.lora.target_modules
                   if not any(t == m or m.endswith("." + t) or t.endswith("." + m) for m in available)
                   and not any(n.endswith(f".{t}.weight") for n in files.tensors)]
        if missing:
            raise FinetuneSpecError(f"lora.target_modules: {spec.base_model} has no module "
                                    f"{', '.join(missing)}; its attention and MLP layers are: "
                                    f"{', '.join(available) or 'none found'}")
    dataset_dir = registry_services.version_folder(dataset_version)
    return base_dir, base_version, dataset_dir, dataset_version


def _default_name(spec: FinetuneSpec) -> str:
    base = spec.base_model.replace("/", "-").replace("@", " v")
    data = spec.dataset.replace("/", "-").replace("@", " v")
    return asset_services.asset_name_check(f"{base} {spec.method} on {data}"[:200])


def finetune_submit(*, spec: FinetuneSpec | dict, owner=None,
                    enqueue: bool = True) -> tuple[TrainingRun, Job]:
    """A new run and its first job. Bad specs and inputs are refused before anything is
    queued."""
    if isinstance(spec, dict):
        spec = spec_parse(spec)
    _, base_version, _, dataset_version = finetune_inputs(spec)
    name = asset_services.asset_name_check(spec.name) if spec.name else _default_name(spec)
    with transaction.atomic():
        run = TrainingRun.objects.create(name=name, owner=owner, spec=spec.model_dump(mode="json"),
                                         base=base_version, dataset=dataset_version)
    job = _submit_job(run=run, resume=False, owner=owner, enqueue=enqueue)
    return run, job


def finetune_resume(*, job: Job, owner=None, enqueue: bool = True) -> tuple[TrainingRun, Job]:
    """Continue the run `job` belonged to from its last checkpoint, as a new job."""
    from apps.monitoring.services import jobs_interrupt_orphans
    from apps.training.engine.finetune import checkpoints

    # A job whose worker was killed a moment ago is not running any more; the user is
    # continuing it here, so no automatic continuation is wanted.
    jobs_interrupt_orphans(continue_jobs=False)
    job.refresh_from_db()
    run = job.training_runs.first()
    if run is None:
        raise JobStateError(f"job {job.pk} is not a fine-tuning run")
    if job.status not in RESUMABLE:
        raise JobStateError(f"job {job.pk} is {job.status}; only a failed, cancelled or interrupted "
                            "run can be resumed")
    if run.jobs.exclude(pk=job.pk).filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists():
        raise JobStateError(f"run {run.pk} already has a job queued or running")
    if not checkpoints(run_dir(run)):
        raise JobStateError(f"run {run.pk} has no checkpoint yet; start it again instead")
    return run, _submit_job(run=run, resume=True, owner=owner or job.owner, enqueue=enqueue)


def finetune_continue_interrupted(job: Job) -> Job | None:
    """Called when a worker running `job` died: the run continues from its last checkpoint
    as a new job, up to AUTO_RESUME_LIMIT times a run."""
    from apps.monitoring.services import job_event_record
    from apps.training.engine.finetune import checkpoints

    run = job.training_runs.first()
    if run is None or not checkpoints(run_dir(run)):
        return None
    if run.jobs.filter(status=Job.Status.INTERRUPTED).count() > AUTO_RESUME_LIMIT:
        return None
    if run.jobs.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists():
        return None
    new = _submit_job(run=run, resume=True, owner=job.owner, enqueue=True)
    job_event_record(job_id=job.pk, kind="log",
                     data={"msg": f"continued from the last checkpoint as job {new.pk}"})
    return new


def _submit_job(*, run: TrainingRun, resume: bool, owner, enqueue: bool) -> Job:
    # The job's spec carries the whole fine-tuning spec, so the job page shows it; the run
    # id ties resumed jobs to the same checkpoints. (A job run inline adds itself to the run
    # before this line does.)
    job = job_submit(kind="finetune", spec={"finetune": run.spec, "run": run.pk, "resume": resume},
                     owner=owner, enqueue=enqueue)
    run.jobs.add(job)
    return job


def finetune_execute(*, run: TrainingRun, job: Job | None, resume: bool, reporter=None) -> dict:
    """Run the engine for `run` and register what it made. Nothing is registered unless the
    run ends; its checkpoints stay for a resume whatever happens."""
    from apps.training.engine.estimate import memory_estimate
    from apps.training.engine.finetune import run_finetune

    reporter = reporter or NullReporter()
    spec = spec_parse(run.spec)
    base_dir, base_version, dataset_dir, dataset_version = finetune_inputs(spec)
    estimate = memory_estimate(spec, base_dir, device=spec.device or _device_guess())
    reporter.log(f"memory estimate: {estimate['bytes'] / 1e9:.2f} GB on {estimate['device']} "
                 f"({estimate['trainable_parameters']:,} trainable parameters)")
    work = asset_services.work_dir("finetune")
    base_ref = str(base_version) if base_version else str(base_dir)
    try:
        result = run_finetune(spec, base_dir=base_dir, dataset_dir=dataset_dir, run_dir=run_dir(run),
                              out_dir=work, reporter=reporter, resume=resume, base_ref=base_ref)
        parents = [v for v in (base_version, dataset_version) if v]
        lineage = {"base_model": base_ref, "dataset": str(dataset_version), "run": run.pk}
        evaluation = {"before": result.before, "after": result.after}
        with transaction.atomic():
            version = asset_services.asset_import(
                source=result.output, kind=result.kind, name=run.name, link=True, parents=parents,
                job=job, owner=run.owner,
                message=f"{spec.method} fine-tune of {base_ref} on {dataset_version}",
                description=f"{spec.method} fine-tune of {base_ref} on {dataset_version} ({spec.task}).",
                spec={"finetune": run.spec, **lineage},
                metadata={"finetune": result.metrics, "evaluation": evaluation, "samples": result.samples,
                          "notes": result.notes, "stopped": result.stopped})
            merged = None
            if result.merged is not None:
                merged = asset_services.asset_import(
                    source=result.merged, kind="model", name=f"{run.name} merged"[:200], link=True,
                    parents=[*parents, version], job=job, owner=run.owner,
                    message=f"{run.name} merged into {base_ref}",
                    spec={"finetune": run.spec, **lineage, "adapter": str(version)},
                    metadata={"finetune": result.metrics, "evaluation": evaluation})
            run.result, run.merged = version, merged
            run.metrics = {**result.metrics, "before": result.before, "after": result.after,
                           "samples": result.samples, "checkpoints": result.checkpoints,
                           "stopped": result.stopped, "notes": result.notes}
            run.save(update_fields=["result", "merged", "metrics"])
        return {"run": run.pk, "adapter" if result.kind == "adapter" else "model": str(version),
                "merged": str(merged) if merged else None, "metrics": result.metrics,
                "evaluation": evaluation, "checkpoints": result.checkpoints, "stopped": result.stopped}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _device_guess() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoints_prunable() -> list[dict]:
    """Checkpoints that free space without losing anything: those of runs whose result is
    registered and that have no job queued or running. `[{"run", "bytes", "paths"}]`."""
    from apps.training.engine.finetune import CHECKPOINTS
    from apps.training.run_selectors import run_checkpoints

    out = []
    busy = {Job.Status.QUEUED, Job.Status.RUNNING}
    for run in TrainingRun.objects.filter(result__isnull=False).order_by("pk"):
        if run.jobs.filter(status__in=busy).exists():
            continue
        found = run_checkpoints(run)
        if found:
            out.append({"run": run, "bytes": sum(c["bytes"] for c in found),
                        "paths": [run_dir(run) / CHECKPOINTS / c["name"] for c in found]})
    return out


def checkpoints_prune() -> dict:
    """Delete what `checkpoints_prunable` lists. Returns {"runs": [ids], "bytes": freed}."""
    freed, runs = 0, []
    for item in checkpoints_prunable():
        for path in item["paths"]:
            shutil.rmtree(path, ignore_errors=True)
        freed += item["bytes"]
        runs.append(item["run"].pk)
    return {"runs": runs, "bytes": freed}
