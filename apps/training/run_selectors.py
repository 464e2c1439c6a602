"""Reads of fine-tuning runs for the run pages and the `runs`/`try_it` commands: which runs a
user may see, their metric history across every job (a resumed run continues its curve),
checkpoints, the live-estimate panel of the new-run form, and comparisons of runs.

Torch-free: the web process imports this module.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.safestring import mark_safe

from apps.monitoring.charts import line_chart_svg
from apps.monitoring.engine.resources import read_gpus
from apps.monitoring.models import Job, JobEvent
from apps.monitoring.selectors import job_eta_seconds
from apps.training.engine.estimate import memory_estimate, suggested_defaults
from apps.training.engine.finetune import checkpoints
from apps.training.engine.spec import FinetuneSpec, FinetuneSpecError
from apps.training.models import TrainingRun
from apps.training.services.finetune import RESUMABLE, finetune_inputs, run_dir
from audobon_site.access import visible_q

# One chart per entry: its title and the metric series drawn on it.
CHARTS = (
    ("loss", "Loss", ("train_loss", "eval_loss")),
    ("learning_rate", "Learning rate", ("learning_rate",)),
    ("tokens_per_s", "Tokens/s", ("tokens_per_s",)),
)
ACTIVE = (Job.Status.QUEUED, Job.Status.RUNNING)
METRIC_ROWS = 20_000  # the newest points kept per run; charts downsample to a few hundred


def runs_visible(*, user) -> QuerySet[TrainingRun]:
    """Runs the user may see: their own, their groups' and everyone's (all for an admin;
    `None`, the local command line: all)."""
    qs = TrainingRun.objects.select_related("owner", "base__asset", "dataset__asset", "result__asset",
                                            "merged__asset")
    if user is None:
        return qs
    return qs.filter(visible_q(user))


def run_visible_get(*, user, run_id: int) -> TrainingRun | None:
    if user is not None and not getattr(user, "is_authenticated", False):
        return None
    return runs_visible(user=user).filter(pk=run_id).first()


def run_jobs(run: TrainingRun) -> list[Job]:
    """The fine-tuning jobs of the run, first to last."""
    return list(run.jobs.filter(kind="finetune").order_by("pk"))


def run_latest_job(run: TrainingRun) -> Job | None:
    return run.jobs.filter(kind="finetune").order_by("-pk").first()


def run_series(run: TrainingRun) -> dict[str, list[tuple[float, float]]]:
    """Every metric of every job of the run by step. A resumed job repeats the steps after
    the checkpoint it started from; its values replace the earlier job's there."""
    job_ids = [j.pk for j in run_jobs(run)]
    rows = (JobEvent.objects.filter(job_id__in=job_ids, kind=JobEvent.Kind.METRIC)
            .order_by("-id").values_list("id", "job_id", "data")[:METRIC_ROWS])
    order = {pk: i for i, pk in enumerate(job_ids)}
    by_name: dict[str, dict[float, float]] = {}
    for _, _, data in sorted(rows, key=lambda r: (order[r[1]], r[0])):
        step = data.get("step", 0)
        for name, value in (data.get("values") or {}).items():
            if isinstance(value, int | float):
                by_name.setdefault(name, {})[step] = value
    return {name: sorted(points.items()) for name, points in by_name.items()}


def run_charts(series: dict[str, list], *, width: int = 340) -> list[dict]:
    charts = []
    for key, title, names in CHARTS:
        picked = {n: series[n] for n in names if series.get(n)}
        svg = line_chart_svg(picked, width=width, height=150) if picked else ""
        charts.append({"key": key, "title": title, "svg": mark_safe(svg)})  # noqa: S308 - numbers and escaped names
    return charts


def run_eta_seconds(job: Job | None) -> float | None:
    """Seconds left for a running job, from the pace of its own metric events: a resumed job
    starts part way, so elapsed time over progress would promise too little."""
    if job is None or job.status != Job.Status.RUNNING or not job.steps_total:
        return None
    events = JobEvent.objects.filter(job_id=job.pk, kind=JobEvent.Kind.METRIC)
    first, last = events.order_by("id").first(), events.order_by("-id").first()
    if first is None or first.pk == last.pk:
        return job_eta_seconds(job)
    steps = last.data.get("step", 0) - first.data.get("step", 0)
    seconds = (last.created_at - first.created_at).total_seconds()
    if steps <= 0 or seconds <= 0:
        return job_eta_seconds(job)
    left = max(0, job.steps_total - job.steps_done) * seconds / steps
    # Time since the last event counts as already spent on the next steps.
    return max(0.0, left - (timezone.now() - last.created_at).total_seconds())


def run_checkpoints(run: TrainingRun) -> list[dict]:
    out = []
    for path in checkpoints(run_dir(run)):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        out.append({"name": path.name, "step": int(path.name.split("-", 1)[1]), "bytes": size})
    return out


def run_resumable_job(run: TrainingRun, *, latest: Job | None = None,
                      has_checkpoints: bool | None = None) -> Job | None:
    """The job a Resume would continue: the latest, when it stopped early and a checkpoint
    is kept."""
    latest = latest if latest is not None else run_latest_job(run)
    if latest is None or latest.status not in RESUMABLE:
        return None
    if has_checkpoints is None:
        has_checkpoints = bool(checkpoints(run_dir(run)))
    return latest if has_checkpoints else None


def run_try_jobs(run: TrainingRun, *, limit: int = 5) -> list[Job]:
    """The run's "Try it" generations, newest first. They are not jobs *of* the run (a
    generation must not block a resume), so they are found by the run id in their spec."""
    return list(Job.objects.filter(kind="try_it", spec__run=run.pk).order_by("-pk")[:limit])


def run_evaluation(run: TrainingRun) -> list[dict]:
    """Rows of before/after for the run's evaluation figures."""
    before, after = run.metrics.get("before") or {}, run.metrics.get("after") or {}
    rows = []
    for key in ("loss", "perplexity", "accuracy"):
        if key in before or key in after:
            b, a = before.get(key), after.get(key)
            better = None
            if isinstance(a, int | float) and isinstance(b, int | float) and a != b:
                better = (a > b) if key == "accuracy" else (a < b)
            rows.append({"name": key, "before": b, "after": a, "better": better})
    return rows


def run_live_context(run: TrainingRun) -> dict:
    """What the run page's live section shows; rebuilt whole from stored events each time."""
    job = run_latest_job(run)
    series = run_series(run)
    cps = run_checkpoints(run)
    active = job is not None and job.status in ACTIVE
    return {
        "run": run, "job": job, "jobs": run_jobs(run), "active": active,
        "percent": round(job.progress * 100, 1) if job else 0,
        "eta_seconds": run_eta_seconds(job),
        "charts": run_charts(series),
        "has_metrics": bool(series),
        "checkpoints": cps,
        "resumable": run_resumable_job(run, latest=job, has_checkpoints=bool(cps)),
        "evaluation": run_evaluation(run),
        "samples": run.metrics.get("samples") or [],
    }


def runs_jobs_latest(runs: list[TrainingRun]) -> dict[int, Job]:
    """The latest fine-tuning job of each run, in one query."""
    latest: dict[int, Job] = {}
    through = (TrainingRun.jobs.through.objects
               .filter(trainingrun_id__in=[r.pk for r in runs], job__kind="finetune")
               .select_related("job").order_by("job_id"))
    for link in through:
        latest[link.trainingrun_id] = link.job
    return latest


# --- the new-run form -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def cuda_visible() -> bool:
    """Whether this machine has an NVIDIA GPU, asked of nvidia-smi (never torch) once."""
    return bool(read_gpus())


def estimate_device(spec: FinetuneSpec) -> str:
    if spec.device:
        return "cuda" if spec.device.startswith("cuda") else "cpu"
    return "cuda" if cuda_visible() else "cpu"


def model_max_positions(model) -> int | None:
    """The longest sequence a registered model reads, from its config.json (small, capped)."""
    config = Path(model.path) / "config.json"
    try:
        if config.stat().st_size > 1_000_000:
            return None
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings") or data.get("n_positions") if isinstance(data, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def form_defaults(parameters: int, max_positions: int | None = None) -> dict:
    """The new-run form's starting values for a base of this many parameters (and rows no
    longer than it reads)."""
    s = suggested_defaults(parameters, cuda=cuda_visible())
    if isinstance(max_positions, int) and max_positions > 0:
        s["max_length"] = min(s["max_length"], max_positions)
    return {"task": "causal_lm", "method": s["method"], "lora_r": s["lora_r"], "lora_alpha": 2 * s["lora_r"],
            "lora_dropout": 0.05, "learning_rate": s["learning_rate"], "batch_size": s["batch_size"],
            "max_steps": 100, "eval_steps": 50, "save_steps": 50, "seed": 0, "packing": False,
            "group_by_length": True, "max_length": s["max_length"], "merge": False,
            "gradient_checkpointing": s["gradient_checkpointing"]}


def run_estimate(spec: FinetuneSpec) -> dict:
    """The memory estimate of a run of `spec` on this machine, with the inputs checked
    header-only. FinetuneSpecError names what is wrong."""
    base_dir, _, _, _ = finetune_inputs(spec)
    try:
        est = memory_estimate(spec, Path(base_dir), device=estimate_device(spec))
    except (OSError, ValueError) as exc:
        raise FinetuneSpecError(f"base_model: {exc}") from None
    total = est["bytes"] or 1
    est["bars"] = [{"name": k, "bytes": v, "percent": round(100 * v / total, 1)}
                   for k, v in est["parts"].items() if v]
    return est


# --- comparing runs ---------------------------------------------------------------------------

def flatten_spec(spec: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(flatten_spec(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def spec_rows(spec: dict) -> list[tuple[str, object]]:
    """The spec as (key, value) rows for a readable table."""
    return sorted(flatten_spec(spec).items())


def run_label(run: TrainingRun) -> str:
    return f"#{run.pk} {run.name}"


def runs_compare(runs: list[TrainingRun], *, width: int = 480) -> dict:
    """Each metric with one line per run, and the spec keys side by side."""
    labels = {run.pk: run_label(run) for run in runs}
    per_run = {run.pk: run_series(run) for run in runs}
    names: list[str] = []
    for _, _, series_names in CHARTS:
        names.extend(series_names)
    names += sorted({n for s in per_run.values() for n in s} - set(names))
    charts = []
    for name in names:
        lines = {labels[pk]: s[name] for pk, s in per_run.items() if s.get(name)}
        if lines:
            charts.append({"name": name, "series": lines,
                           "svg": mark_safe(line_chart_svg(lines, width=width, height=170))})  # noqa: S308
    flat = [flatten_spec(run.spec) for run in runs]
    keys = sorted({k for f in flat for k in f})
    diff = []
    for key in keys:
        values = [f.get(key) for f in flat]
        diff.append({"key": key, "values": values, "differs": any(v != values[0] for v in values)})
    return {"runs": runs, "charts": charts, "spec_rows": diff,
            "differs": [row["key"] for row in diff if row["differs"]]}


def run_as_dict(run: TrainingRun, *, latest: Job | None = None) -> dict:
    """The JSON shape of a run for `runs --json`."""
    job = latest if latest is not None else run_latest_job(run)
    return {
        "id": run.pk, "name": run.name, "owner": run.owner.get_username() if run.owner else None,
        "base": str(run.base) if run.base else run.spec.get("base_model"),
        "dataset": str(run.dataset) if run.dataset else run.spec.get("dataset"),
        "status": job.status if job else None, "job": job.pk if job else None,
        "jobs": list(run.jobs.filter(kind="finetune").order_by("pk").values_list("pk", flat=True)),
        "result": str(run.result) if run.result else None,
        "merged": str(run.merged) if run.merged else None,
        "metrics": {k: v for k, v in run.metrics.items() if k not in ("samples",)},
        "created_at": run.created_at.isoformat() if run.created_at else None,
    }
