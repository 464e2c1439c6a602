"""Reads for pages, the websocket consumer, commands and /healthz."""

from __future__ import annotations

import shutil

from django.conf import settings
from django.db import connection
from django.db.models import Max, QuerySet
from django.utils import timezone
from django.utils.safestring import mark_safe

from apps.monitoring.charts import line_chart_svg
from apps.monitoring.jobkinds import JOB_KINDS
from apps.monitoring.models import ErrorGroup, Job, JobEvent, ResourceSample, WorkerHeartbeat
from audobon_site.access import acting_user, visible_q

RECENT_LOG_LINES = 8
CHART_POINTS = 2000
# Below this much free space in AUDOBON_HOME, /healthz reports the disk as a problem.
MIN_FREE_BYTES = 100 * 1024 * 1024


def jobs_visible(*, user) -> QuerySet[Job]:
    """Jobs the user may see: their own, their groups' and everyone's (all for an admin)."""
    return Job.objects.select_related("owner").filter(visible_q(user))


def job_visible_get(*, user, job_id: int) -> Job | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return jobs_visible(user=user).filter(pk=job_id).first()


def job_list(*, user, status: str = "", kind: str = "", area: str = "") -> QuerySet[Job]:
    qs = jobs_visible(user=user)
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    if area:
        qs = qs.filter(kind__in=[k.name for k in JOB_KINDS.values() if k.area == area])
    return qs


def job_eta_seconds(job: Job) -> float | None:
    if job.status != Job.Status.RUNNING or not job.started_at or job.progress <= 0:
        return None
    elapsed = (timezone.now() - job.started_at).total_seconds()
    return max(0.0, elapsed / job.progress * (1 - job.progress))


def job_as_dict(job: Job) -> dict:
    """The JSON shape of a job, shared by `--json` output and the API."""
    return {
        "id": job.pk, "kind": job.kind, "status": job.status, "progress": round(job.progress, 4),
        "steps_done": job.steps_done, "steps_total": job.steps_total, "priority": job.priority,
        "queue": job.queue, "spec": job.spec, "owner": job.owner.get_username() if job.owner else None,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "worker_id": job.worker_id, "error": job.error, "result": job.result,
        "retry_of": job.retry_of_id,
        # What it declared it needs (with the device it was placed on), and why it waits.
        "needs": job.needs, "waiting_for": job_waiting_reason(job),
    }


def job_live_context(*, job: Job, after: int = 0) -> dict:
    """Everything the live progress partial shows, plus events newer than `after`
    for the history list. `last_event_id` lets the next update continue from here.

    The last event id is read before the job row, and every event query stops at it:
    a worker updates the row before it records the event, so the row read here is at
    least as new as the events shown, and anything later is picked up next time.
    """
    last_id = JobEvent.objects.filter(job_id=job.pk).aggregate(m=Max("id"))["m"] or 0
    job.refresh_from_db()
    events = JobEvent.objects.filter(job_id=job.pk, id__lte=last_id)
    logs = list(events.filter(kind=JobEvent.Kind.LOG).order_by("-id")[:RECENT_LOG_LINES])
    metric_rows = list(
        events.filter(kind=JobEvent.Kind.METRIC).order_by("-id")
        .values_list("data", flat=True)[:CHART_POINTS]
    )
    series: dict[str, list[tuple[float, float]]] = {}
    for data in reversed(metric_rows):
        for name, value in (data.get("values") or {}).items():
            series.setdefault(name, []).append((data.get("step", 0), value))
    new_events = list(events.filter(id__gt=after).order_by("id")) if after >= 0 else []
    return {
        "job": job,
        "percent": round(job.progress * 100, 1),
        "eta_seconds": job_eta_seconds(job),
        "recent_logs": list(reversed(logs)),
        "chart_svg": mark_safe(line_chart_svg(series)),  # noqa: S308 - numbers and escaped names
        "new_events": new_events,
        "last_event_id": last_id,
        "waiting": job_waiting_reason(job),
        "device": job_device(job),
    }


def job_history(*, job: Job, up_to: int) -> list[JobEvent]:
    """The page's history list; it stops where the websocket's `after` starts."""
    return list(job.events.filter(id__lte=up_to).exclude(kind=JobEvent.Kind.PROGRESS))


def workers_status() -> list[dict]:
    now = timezone.now()
    stale = settings.AUDOBON_WORKER_STALE_SECONDS
    rows = []
    for w in WorkerHeartbeat.objects.order_by("queue", "worker_id"):
        age = (now - w.last_seen).total_seconds()
        rows.append({"id": w.worker_id, "queue": w.queue, "host": w.host, "pid": w.pid, "device": w.device,
                     "last_seen": w.last_seen.isoformat(), "age_s": round(age, 1),
                     "alive": age <= stale})
    return rows


def resource_latest() -> ResourceSample | None:
    return ResourceSample.objects.order_by("-created_at").first()


def health_report() -> dict:
    """What /healthz answers: each part with ok and detail; ok overall only if all are."""
    from audobon_site.queues import QUEUES, queue_backend

    report: dict = {}
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        report["database"] = {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        report["database"] = {"ok": False, "error": str(exc)}
    try:
        pending = {name: q.pending_count() for name, q in QUEUES.items()}
        report["queue"] = {"ok": True, "backend": queue_backend(), "pending": pending}
    except Exception as exc:
        report["queue"] = {"ok": False, "backend": queue_backend(), "error": str(exc)}
    workers = workers_status() if report["database"]["ok"] else []
    alive_queues = {w["queue"] for w in workers if w["alive"]}
    missing = [q for q in QUEUES if q not in alive_queues]
    report["workers"] = {"ok": not missing, "missing_queues": missing, "workers": workers}
    disk = shutil.disk_usage(settings.AUDOBON_HOME)
    report["disk"] = {"ok": disk.free >= MIN_FREE_BYTES, "path": str(settings.AUDOBON_HOME),
                      "free_bytes": disk.free, "total_bytes": disk.total}
    report["ok"] = all(part["ok"] for part in report.values() if isinstance(part, dict))
    report["status"] = "ok" if report["ok"] else "degraded"
    return report



def job_kinds_for_area(*, area: str) -> list:
    return sorted((k for k in JOB_KINDS.values() if k.area == area), key=lambda k: k.name)


# --- what a job made, and its spec and result as tables ------------------------------------------

TABLE_ROWS = 200


def table_rows(data, *, limit: int = TABLE_ROWS) -> list[dict]:
    """A nested spec or result as rows of (dotted key, text): dicts are walked, lists of
    scalars joined, anything else shown as compact JSON; multi-line text marked `long`."""
    import json

    rows: list[dict] = []

    def walk(prefix: str, value) -> None:
        if len(rows) >= limit:
            return
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            text = ", ".join("—" if v is None else str(v) for v in value)
        elif isinstance(value, dict | list):
            text = json.dumps(value, default=str)
        else:
            text = "—" if value is None else str(value)
        rows.append({"key": prefix or "(value)", "text": text, "long": "\n" in text or len(text) > 200})

    if data not in (None, {}, []):
        walk("", data)
    return rows


def job_outputs(*, job: Job) -> list[dict]:
    """The asset versions a job registered (through `AssetVersion.job`), each with its
    validation (assembly) or evaluation (training) summary as table rows."""
    from django.apps import apps

    version_model = apps.get_model("assets", "AssetVersion")
    out = []
    made = version_model.objects.filter(job_id=job.pk)
    if acting_user() is not None:  # only what the viewer may see of it
        made = made.filter(visible_q(acting_user(), "asset__"))
    for v in made.select_related("asset").order_by("created_at"):
        meta = v.metadata or {}
        summary = []
        if isinstance(meta.get("validation"), dict):
            val = meta["validation"]
            summary = table_rows({"loss": val.get("losses"), "skipped": val.get("skipped") or None,
                                  "gates passed": val.get("ok")}, limit=12)
        elif isinstance(meta.get("evaluation"), dict):
            summary = table_rows(meta["evaluation"], limit=12)
        out.append({"version": v, "summary": summary})
    return out


def job_usage(job: Job) -> dict:
    """Duration, peak memory and throughput (steps a second) of a job that has run."""
    if not job.started_at:
        return {}
    end = job.finished_at or timezone.now()
    seconds = max((end - job.started_at).total_seconds(), 0.0)
    return {"seconds": round(seconds, 1), "peak_rss": job.peak_rss, "peak_gpu_memory": job.peak_gpu_memory,
            "steps_per_second": round(job.steps_done / seconds, 2) if seconds and job.steps_done else None}


CHART_SAMPLE_POINTS = 300


def resource_history(*, hours: float = 1.0, now=None) -> str:
    """An SVG chart of CPU and RAM use (percent) over the last `hours`, from the stored
    samples (raw for the last hour, minute means before it); "" when there are none."""
    from datetime import timedelta

    from django.db.models.functions import Mod

    now = now or timezone.now()
    rows = ResourceSample.objects.filter(created_at__gte=now - timedelta(hours=hours))
    # About CHART_SAMPLE_POINTS rows, evenly spread (every k-th by id): a week holds ~12,000 rows,
    # and reading them all (with their GPU JSON) would cost the page its speed.
    step = -(-rows.count() // CHART_SAMPLE_POINTS)
    if step > 1:
        rows = rows.annotate(pick=Mod("id", step)).filter(pick=0)
    cpu, ram, gpu = [], [], []
    for s in rows.order_by("created_at").values("created_at", "cpu_percent", "ram_used", "ram_total", "gpus"):
        x = round((s["created_at"] - now).total_seconds() / 60, 2)  # minutes, 0 = now
        cpu.append((x, s["cpu_percent"]))
        ram.append((x, 100 * s["ram_used"] / s["ram_total"] if s["ram_total"] else 0.0))
        busy = [g["util_percent"] for g in s["gpus"] or [] if isinstance(g.get("util_percent"), int | float)]
        if busy:
            gpu.append((x, sum(busy) / len(busy)))
    series = {"CPU %": cpu, "RAM %": ram}
    if gpu:
        series["GPU %"] = gpu
    return mark_safe(line_chart_svg(series, width=420, height=120))  # noqa: S308 - numbers and fixed names


def error_groups(limit: int = 200) -> list[ErrorGroup]:
    """The error log, the most recently seen first, with the ids of up to 20 linked jobs."""
    groups = list(ErrorGroup.objects.order_by("-last_seen")[:limit])
    for g in groups:
        g.job_ids = list(g.jobs.order_by("-id").values_list("id", flat=True)[:20])
    return groups


# --- queues ---------------------------------------------------------------------------------------

def queue_paused(name: str) -> bool:
    from apps.monitoring.models import QueueState

    return QueueState.objects.filter(name=name, paused=True).exists()


def queues_summary() -> list[dict]:
    """Each queue: whether it is paused (and by whom, since when), its queued and running
    jobs. Every queue is listed, idle ones too."""
    from django.db.models import Count

    from apps.monitoring.models import QueueState
    from audobon_site.queues import QUEUE_NAMES

    counts = {(r["queue"], r["status"]): r["n"] for r in
              Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
              .values("queue", "status").annotate(n=Count("id"))}
    states = {s.name: s for s in QueueState.objects.select_related("changed_by")}
    out = []
    for name in QUEUE_NAMES:
        state = states.get(name)
        paused = bool(state and state.paused)
        out.append({"name": name, "paused": paused,
                    "queued": counts.get((name, Job.Status.QUEUED), 0),
                    "running": counts.get((name, Job.Status.RUNNING), 0),
                    "changed_at": state.changed_at.isoformat() if state else None,
                    "changed_by": state.changed_by.get_username() if state and state.changed_by else None})
    return out


def job_waiting_reason(job: Job) -> str:
    """Why a queued job has not started: its queue is paused, or what it waits for."""
    if job.status != Job.Status.QUEUED:
        return ""
    if queue_paused(job.queue):
        return f"waiting: queue {job.queue} is paused"
    return job.waiting_for


def gpus_visible() -> bool | None:
    """Whether the last resource sample saw a GPU; None before the first sample."""
    sample = ResourceSample.objects.order_by("-created_at").values("gpus").first()
    return None if sample is None else bool(sample["gpus"])


def job_device(job: Job) -> str:
    """Where a job's work runs, in words: the device it was placed on or declared, and, on a
    machine where no GPU is visible, that it runs on the CPU."""
    declared = (job.needs or {}).get("device") or ""
    no_gpu = gpus_visible() is False
    if declared.startswith("cuda"):
        return f"GPU {declared}" + (", but no GPU is visible on this machine now" if no_gpu else "")
    if no_gpu:
        return "the CPU (no GPU is visible on this machine)"
    return "the CPU" if declared == "cpu" else ""


def dashboard_live_context(*, history_week: str | None = None) -> dict:
    """What the dashboard's live part shows: the newest sample, the queues and the charts
    (the week's chart of minute means is given by a caller that drew it a moment ago)."""
    sample = resource_latest()
    if history_week is None:
        history_week = resource_history(hours=24 * 7)
    return {"sample": sample, "queues": queues_summary(),
            "no_gpu": sample is not None and not sample.gpus,
            "history_hour": resource_history(hours=1), "history_week": history_week}
