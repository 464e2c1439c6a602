"""Writes for the job spine. Every long operation goes through `job_submit`."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import time
from datetime import timedelta

import psutil
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from pydantic import BaseModel, ValidationError

from apps.monitoring.engine.errors import error_signature
from apps.monitoring.jobkinds import JOB_KINDS, JobKind
from apps.monitoring.models import ErrorGroup, Job, JobEvent, QueueState, ResourceSample, WorkerHeartbeat

logger = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()
SAMPLE_KEEP = timedelta(days=7)  # minute means are kept this long
SAMPLE_RAW_KEEP = timedelta(hours=1)  # raw samples this long, then folded into minute means
_compacted_at = [0.0]
DEAD_WORKER_KEEP = timedelta(hours=1)  # a worker that stopped reporting is shown dead this long


class JobSpecError(ValueError):
    """An unknown kind or a spec that fails its schema: nothing was queued."""


class JobStateError(ValueError):
    """The job is not in a state that allows what was asked (cancel a finished job...)."""


# --- submitting -------------------------------------------------------------------------

def job_spec_validate(*, kind: str, spec) -> tuple[JobKind, BaseModel]:
    """Check kind and spec; return the kind and the parsed spec (defaults filled in)."""
    job_kind = JOB_KINDS.get(kind)
    if job_kind is None:
        known = ", ".join(sorted(JOB_KINDS)) or "none"
        raise JobSpecError(f"unknown job kind {kind!r}; known kinds: {known}")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise JobSpecError(f"the spec of a {kind} job must be a JSON object, not {type(spec).__name__}")
    try:
        parsed = job_kind.spec_model.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise JobSpecError(f"invalid spec for {kind}: {problems}") from None
    return job_kind, parsed


def job_submit(*, kind: str, spec=None, owner=None, priority: int = 0,
               retry_of: Job | None = None, enqueue: bool = True) -> Job:
    """Validate, record and enqueue a job. Raises JobSpecError and queues nothing on bad input.
    With `enqueue=False` the job is only recorded, for a command that runs it in its own
    process (`execute_job`) and still shows it on the pages like any other."""
    job_kind, parsed = job_spec_validate(kind=kind, spec=spec)
    clean_spec, queue = parsed.model_dump(mode="json"), job_kind.queue_for(parsed)
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind, spec=clean_spec, owner=owner, priority=int(priority), queue=queue,
            retry_of=retry_of,
        )
        JobEvent.objects.create(job=job, kind=JobEvent.Kind.STATE, data={"status": "queued"})
    if enqueue:
        _enqueue(job)
    job.refresh_from_db()
    return job


def _enqueue(job: Job) -> None:
    from apps.monitoring.tasks import RUN_JOB

    RUN_JOB[job.queue](job.pk, priority=job.priority)


def job_retry(*, job: Job, owner=None) -> Job:
    if not job.is_finished:
        raise JobStateError(f"job {job.pk} is {job.status}; only a finished job can be retried")
    return job_submit(kind=job.kind, spec=job.spec, owner=owner or job.owner,
                      priority=job.priority, retry_of=job)


def job_priority_set(*, job: Job, priority: int) -> Job:
    """Change a queued job's priority (higher runs first). The queue gets a new entry at the
    new priority; whichever entry a worker reaches first claims the job in `job_start`, and
    the other finds it taken and does nothing."""
    if not -1000 <= int(priority) <= 1000:
        raise JobStateError(f"priority {priority} is outside -1000..1000")
    updated = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(priority=int(priority))
    job.refresh_from_db()
    if not updated:
        raise JobStateError(f"job {job.pk} is {job.status}; only a queued job's priority can change")
    job_event_record(job_id=job.pk, kind=JobEvent.Kind.LOG, data={"msg": f"priority set to {job.priority}"})
    _enqueue(job)
    return job


def job_cancel(*, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next step."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, finished_at=now, cancel_requested=True
    ):
        job_event_record(job_id=job.pk, kind=JobEvent.Kind.STATE, data={"status": "cancelled"})
    elif Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True):
        job_event_record(job_id=job.pk, kind=JobEvent.Kind.LOG, data={"msg": "cancel requested"})
    else:
        job.refresh_from_db()
        raise JobStateError(f"job {job.pk} already {job.status}; there is nothing to cancel")
    job.refresh_from_db()
    return job


# --- what workers record ------------------------------------------------------------------

def job_event_record(*, job_id: int, kind: str, data: dict) -> JobEvent:
    event = JobEvent.objects.create(job_id=job_id, kind=kind, data=data)
    if settings.REDIS_URL:
        # After the commit: a consumer woken by the push must find the event (and, for the
        # last one, the finished job) when it reads.
        transaction.on_commit(lambda: _publish(job_id, event.pk))
    return event


def _publish(job_id: int, event_id: int) -> None:
    from channels.layers import get_channel_layer

    try:
        async_to_sync(get_channel_layer().group_send)(
            f"job.{job_id}", {"type": "job.event", "event_id": event_id}
        )
    except Exception:  # the browser also polls; a lost push only delays an update
        logger.warning("could not publish event %s of job %s", event_id, job_id, exc_info=True)


def job_start(*, job_id: int, worker_id: str) -> bool:
    """Claim a queued job for this worker. False if it was cancelled meanwhile."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, worker_id=worker_id
    )
    if claimed:
        job_event_record(job_id=job_id, kind=JobEvent.Kind.STATE,
                         data={"status": "running", "worker": worker_id})
    return bool(claimed)


def job_progress_set(*, job_id: int, done: int, total: int | None) -> None:
    fields = {"steps_done": done, "steps_total": total, "heartbeat_at": timezone.now()}
    if total:
        fields["progress"] = max(0.0, min(1.0, done / total))
    Job.objects.filter(pk=job_id).update(**fields)


def job_heartbeat(*, job_id: int) -> None:
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())


def job_finish(*, job_id: int, status: str, result=None, error: str = "",
               traceback: str = "", peak_rss: int | None = None, peak_gpu_memory: int | None = None) -> None:
    fields = {"status": status, "finished_at": timezone.now(), "error": error[:10_000],
              "traceback": traceback, "peak_rss": peak_rss, "peak_gpu_memory": peak_gpu_memory}
    if result is not None:
        fields["result"] = result
    if status == Job.Status.SUCCEEDED:
        fields["progress"] = 1.0
    data = {"status": status}
    if error:
        data["error"] = error[:500]
    # One commit: a reader that sees the job finished also sees its last event, so a page
    # closing its socket on "finished" never misses the final history line.
    with transaction.atomic():
        Job.objects.filter(pk=job_id).update(**fields)
        job_event_record(job_id=job_id, kind=JobEvent.Kind.STATE, data=data)


# --- workers and crash recovery ---------------------------------------------------------------

def worker_heartbeat(*, worker_id: str, queue: str, started_at, device: str = "") -> None:
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults={"queue": queue, "host": HOSTNAME, "pid": os.getpid(), "device": device,
                  "started_at": started_at, "last_seen": timezone.now()},
    )


def worker_gone(*, worker_id: str) -> list[int]:
    """A worker stops: its running jobs become interrupted, the queued ones it held waiting
    go back on their queues, its heartbeat row goes."""
    ids = _interrupt(Job.objects.filter(status=Job.Status.RUNNING, worker_id=worker_id),
                     reason=f"worker {worker_id} stopped")
    _return_held(Job.objects.filter(status=Job.Status.QUEUED, worker_id=worker_id))
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()
    return ids


def _return_held(qs) -> list[int]:
    """Queued jobs a worker took off the queue to wait (for room, or for its paused queue)
    and that worker is gone: back on their queues, at their priorities."""
    back = []
    for job in qs.only("pk", "worker_id", "queue", "priority"):
        mine = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED, worker_id=job.worker_id)
        if mine.update(worker_id=""):
            job_event_record(job_id=job.pk, kind=JobEvent.Kind.LOG,
                             data={"msg": f"worker {job.worker_id} stopped while this job waited; "
                                          f"back on the {job.queue} queue"})
            _enqueue(job)
            back.append(job.pk)
    return back


def jobs_interrupt_orphans(*, continue_jobs: bool = True) -> list[int]:
    """Mark running jobs whose worker is gone as interrupted (and, with `continue_jobs`,
    let their kinds continue them).

    Gone means: the worker ran on this host and its process no longer exists, or no
    heartbeat came for AUDOBON_WORKER_STALE_SECONDS (a worker on another machine). Queued
    jobs a gone worker held waiting (for room, or for a paused queue) go back on their queues.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.AUDOBON_WORKER_STALE_SECONDS)
    orphans = []
    for job in Job.objects.filter(status=Job.Status.RUNNING).only("pk", "worker_id",
                                                                   "heartbeat_at"):
        if _worker_dead_here(job.worker_id) or (
            job.heartbeat_at is None or job.heartbeat_at < stale_before
        ):
            orphans.append(job.pk)
    ids = _interrupt(Job.objects.filter(pk__in=orphans, status=Job.Status.RUNNING),
                     reason="its worker is gone", continue_jobs=continue_jobs)
    held = Job.objects.filter(status=Job.Status.QUEUED).exclude(worker_id="").only("pk", "worker_id")
    alive = set(WorkerHeartbeat.objects.filter(last_seen__gte=stale_before)
                .values_list("worker_id", flat=True))
    _return_held(Job.objects.filter(pk__in=[j.pk for j in held if _worker_dead_here(j.worker_id)
                                             or j.worker_id not in alive]))
    # A dead worker's row stays a while, so pages can say that it died (the banner, status).
    WorkerHeartbeat.objects.filter(last_seen__lt=timezone.now() - DEAD_WORKER_KEEP).delete()
    return ids


def _worker_dead_here(worker_id: str) -> bool:
    host, _, rest = worker_id.partition(":")
    if host != HOSTNAME:
        return False
    pid_text = rest.split(":", 1)[0]
    if not pid_text.isdigit():
        return False
    return not psutil.pid_exists(int(pid_text))


def _interrupt(qs, *, reason: str, continue_jobs: bool = True) -> list[int]:
    ids = list(qs.values_list("pk", flat=True))
    for job_id in ids:
        if Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
            status=Job.Status.INTERRUPTED, finished_at=timezone.now(),
            error=f"interrupted: {reason}",
        ):
            job_event_record(job_id=job_id, kind=JobEvent.Kind.STATE,
                             data={"status": "interrupted", "error": reason})
            if continue_jobs:
                _after_interrupt(job_id)
    return ids


def _after_interrupt(job_id: int) -> None:
    job = Job.objects.get(pk=job_id)
    kind = JOB_KINDS.get(job.kind)
    if kind is None or kind.on_interrupted is None:
        return
    try:
        kind.on_interrupted(job)
    except Exception as exc:  # the sweep goes on; the job page says why it did not continue
        logger.exception("continuing interrupted job %s failed", job_id)
        job_event_record(job_id=job_id, kind=JobEvent.Kind.LOG,
                         data={"msg": f"could not continue automatically: {exc}"})


# --- resources ------------------------------------------------------------------------------

def resource_sample_record(*, reading) -> ResourceSample:
    sample = ResourceSample.objects.create(
        cpu_percent=reading.cpu_percent, ram_used=reading.ram_used, ram_total=reading.ram_total,
        disk_free=reading.disk_free, disk_total=reading.disk_total, gpus=reading.gpus,
    )
    if time.monotonic() - _compacted_at[0] >= 60:  # folding is a minute's work at most
        _compacted_at[0] = time.monotonic()
        resources_compact()
    return sample


def _mean_gpus(rows: list[list[dict]]) -> list[dict]:
    by_index: dict = {}
    for gpus in rows:
        for g in gpus or []:
            by_index.setdefault(g.get("index"), []).append(g)
    out = []
    for _index, readings in sorted(by_index.items(), key=lambda kv: str(kv[0])):
        mean = dict(readings[-1])
        for key in ("util_percent", "mem_used_mb", "temp_c"):
            values = [r[key] for r in readings if isinstance(r.get(key), int | float)]
            mean[key] = round(sum(values) / len(values), 2) if values else None
        out.append(mean)
    return out


def resources_compact(*, now=None) -> dict:
    """Raw samples older than SAMPLE_RAW_KEEP become one row a minute holding their means;
    rows older than SAMPLE_KEEP go. Returns {"folded": raw rows folded, "minutes": rows made,
    "deleted": old rows removed}."""
    now = now or timezone.now()
    deleted, _ = ResourceSample.objects.filter(created_at__lt=now - SAMPLE_KEEP).delete()
    cutoff = (now - SAMPLE_RAW_KEEP).replace(second=0, microsecond=0)  # whole minutes only
    raw = list(ResourceSample.objects.filter(resolution=0, created_at__lt=cutoff).order_by("created_at"))
    buckets: dict = {}
    for s in raw:
        buckets.setdefault(s.created_at.replace(second=0, microsecond=0), []).append(s)
    made = []
    for minute, rows in buckets.items():
        n = len(rows)
        made.append(ResourceSample(
            created_at=minute, resolution=60, cpu_percent=sum(r.cpu_percent for r in rows) / n,
            ram_used=sum(r.ram_used for r in rows) // n, ram_total=rows[-1].ram_total,
            disk_free=sum(r.disk_free for r in rows) // n, disk_total=rows[-1].disk_total,
            gpus=_mean_gpus([r.gpus for r in rows])))
    with transaction.atomic():
        ResourceSample.objects.bulk_create(made)
        ResourceSample.objects.filter(pk__in=[s.pk for s in raw]).delete()
    return {"folded": len(raw), "minutes": len(made), "deleted": deleted}


# --- accounts ----------------------------------------------------------------------------------

def admin_ensure() -> tuple[object, str | None]:
    """Make sure an administrator exists. Returns (user, password) where password is
    only set when the account was created now: it is shown once and never stored."""
    User = get_user_model()
    user = User.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if user is not None:
        return user, None
    password = secrets.token_urlsafe(12)
    name = "admin"
    while User.objects.filter(username=name).exists():
        name = f"admin{secrets.randbelow(10_000)}"
    user = User.objects.create_superuser(username=name, email="", password=password)
    return user, password


# --- the error log --------------------------------------------------------------------------

def error_record(*, exc: BaseException, where: str = "", job_id: int | None = None) -> ErrorGroup | None:
    """Count an exception into its group (made on first sight) and link the job it failed.
    Never raises: the log must not turn one failure into two."""
    import traceback as tb

    try:
        sig, title = error_signature(exc)
        now = timezone.now()
        text = "".join(tb.format_exception(exc))[-20_000:]
        with transaction.atomic():
            group, _ = ErrorGroup.objects.select_for_update().get_or_create(
                signature=sig, defaults={"title": title[:1000], "exc_type": type(exc).__qualname__[:200],
                                         "first_seen": now})
            group.count += 1
            group.last_seen = now
            group.message = str(exc)[:5000]
            group.traceback = text
            group.where = where[:300]
            group.save()
            if job_id is not None:
                group.jobs.add(job_id)
        return group
    except Exception:  # the database itself may be what failed
        logger.exception("could not record an error in the error log")
        return None


# --- room for a job -----------------------------------------------------------------------------

def machine_now(device: str | None, *, exclude_job: int | None = None):
    """Memory and disk on `device` now, and what the running jobs declared on it; None when
    that device's memory cannot be read (a GPU without NVML or nvidia-smi): not checked."""
    from apps.monitoring.engine.fit import Machine
    from apps.monitoring.engine.resources import read_gpus

    device = device or "cpu"
    running = Job.objects.filter(status=Job.Status.RUNNING, needs__isnull=False)
    if exclude_job is not None:
        running = running.exclude(pk=exclude_job)
    same = [j.needs for j in running.only("needs") if (j.needs.get("device") or "cpu") == device]
    disk = shutil.disk_usage(settings.AUDOBON_HOME)
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        gpu = next((g for g in read_gpus() if g.get("index") == index), None)
        if gpu is None or not gpu.get("mem_total_mb"):
            return None
        total = int(gpu["mem_total_mb"] * 2**20)
        free = total - int((gpu.get("mem_used_mb") or 0) * 2**20)
    else:
        mem = psutil.virtual_memory()
        total, free = mem.total, mem.available
    return Machine(memory_total=total, memory_free=free, disk_free=disk.free,
                   reserved_memory=sum(int(n.get("memory") or 0) for n in same),
                   reserved_disk=sum(int(n.get("disk") or 0) for n in same))


def job_waiting_set(*, job_id: int, reason: str) -> None:
    Job.objects.filter(pk=job_id).update(waiting_for=reason[:500])
    if reason:
        job_event_record(job_id=job_id, kind=JobEvent.Kind.LOG, data={"msg": reason})


def job_requeue(*, job: Job, delay: float) -> None:
    """Put a queued job back on its queue after `delay` seconds, for another worker (one on a
    device where it fits) to take; whichever worker reaches it then decides again."""
    from apps.monitoring.tasks import RUN_JOB

    RUN_JOB[job.queue].schedule(args=(job.pk,), delay=delay, priority=job.priority)


def job_device_set(*, job_id: int, device: str) -> None:
    """Record the device a job was placed on (in its needs, which the running jobs' memory
    reservations are counted by)."""
    job = Job.objects.filter(pk=job_id).only("needs").first()
    if job is None or (job.needs or {}).get("device") == device:
        return
    Job.objects.filter(pk=job_id).update(needs={**(job.needs or {}), "device": device})
    job_event_record(job_id=job_id, kind=JobEvent.Kind.LOG, data={"msg": f"placed on {device}"})


def gpu_machines(*, here: str, exclude_job: int | None = None) -> tuple[dict, set[str]]:
    """({device: its reading (fit.Machine) or None}, the devices whose workers are running a
    job now) for this worker's GPU and the GPUs of the other live heavy workers, on any host
    sharing the database."""
    stale_before = timezone.now() - timedelta(seconds=settings.AUDOBON_WORKER_STALE_SECONDS)
    workers = dict(WorkerHeartbeat.objects.filter(queue="heavy", device__startswith="cuda",
                                                  last_seen__gte=stale_before)
                   .values_list("worker_id", "device"))
    running = set(Job.objects.filter(status=Job.Status.RUNNING, worker_id__in=list(workers))
                  .values_list("worker_id", flat=True))
    busy = {device for worker, device in workers.items() if worker in running and device != here}
    devices = {*workers.values(), here}
    return {d: machine_now(d, exclude_job=exclude_job) for d in sorted(devices)}, busy


# --- pausing a queue -------------------------------------------------------------------------------

class UnknownQueue(ValueError):
    """A queue name that is not one of Audobon's queues."""


def _queue_check(name: str) -> str:
    from audobon_site.queues import QUEUE_NAMES

    if name not in QUEUE_NAMES:
        raise UnknownQueue(f"no queue named {name!r}; the queues are {', '.join(QUEUE_NAMES)}")
    return name


def queue_pause(*, name: str, user=None) -> QueueState:
    """Pause a queue: its workers start no new job (running ones finish); its queued jobs
    keep their places and say why they wait."""
    return _queue_set(name=_queue_check(name), paused=True, user=user)


def queue_resume(*, name: str, user=None) -> QueueState:
    return _queue_set(name=_queue_check(name), paused=False, user=user)


def _queue_set(*, name: str, paused: bool, user) -> QueueState:
    with transaction.atomic():
        state, _ = QueueState.objects.select_for_update().get_or_create(name=name)
        changed = state.paused != paused
        state.paused, state.changed_by, state.changed_at = paused, user, timezone.now()
        state.save()
        if changed:
            # A line in each waiting job's history: their pages update (and say why) at once.
            who = f" by {user.get_username()}" if user is not None else ""
            msg = f"queue {name} {'paused' if paused else 'resumed'}{who}"
            waiting = Job.objects.filter(queue=name, status=Job.Status.QUEUED).values_list("pk", flat=True)
            for job_id in waiting:
                job_event_record(job_id=job_id, kind=JobEvent.Kind.LOG, data={"msg": msg})
    return state
