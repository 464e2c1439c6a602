"""The one task wrapper every job kind runs through, and the selftest kind.

`execute_job` claims the job, heartbeats while it runs, turns reporter calls into
JobEvents, and ends it as succeeded, failed (with traceback), or cancelled.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback

from django.conf import settings
from django.db import close_old_connections, connection

from apps.monitoring import selectors, services
from apps.monitoring.engine.fit import fit_check, placement
from apps.monitoring.engine.reporter import JobCancelled
from apps.monitoring.engine.selftest import SelftestSpec, run_selftest
from apps.monitoring.engine.usage import UsageWatch
from apps.monitoring.jobkinds import JOB_KINDS, job_kind
from apps.monitoring.models import Job, JobEvent
from audobon_site.access import acting_as
from audobon_site.queues import QUEUE_NAMES, QUEUES

logger = logging.getLogger(__name__)

# Progress rows are written at most this often; metrics and logs are always kept.
PROGRESS_EVERY_S = 0.1
CANCEL_CHECK_EVERY_S = 0.2
FIT_POLL_S = 2.0  # how often a job waiting for room (or for its paused queue) looks again
# Set by `run_worker` as it stops: a job it holds waiting does not start; the stop puts it
# back on its queue (services.worker_gone).
STOPPING = threading.Event()


def current_worker_id() -> str:
    return os.environ.get("AUDOBON_WORKER_ID") or f"inline:{os.getpid()}"


def worker_device() -> str:
    """The GPU this worker runs its jobs on ("cuda:N", set by `audobon up` with
    AUDOBON_DEVICES and by `audobon worker --device`), or "" when it has none of its own."""
    return os.environ.get("AUDOBON_WORKER_DEVICE", "")


class JobReporter:
    """The Reporter an engine gets inside a worker: every call becomes a JobEvent."""

    def __init__(self, job_id: int, tee=None):
        self.job_id = job_id
        self.tee = tee  # another Reporter shown the same steps and lines (a terminal bar)
        self._last_progress = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._unwritten: tuple[int, int | None] | None = None

    def step(self, done: int, total: int | None = None, **metrics: float) -> None:
        if self.tee is not None:
            self.tee.step(done, total, **metrics)
        now = time.monotonic()
        final = total is not None and done >= total
        self._unwritten = (done, total)
        if final or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.flush()
        if metrics:
            values = {k: float(v) for k, v in metrics.items()}
            services.job_event_record(job_id=self.job_id, kind=JobEvent.Kind.METRIC,
                                      data={"step": done, "values": values})

    def flush(self) -> None:
        """Write the last step reported if the throttle held it back."""
        if self._unwritten is None:
            return
        done, total = self._unwritten
        self._unwritten = None
        services.job_progress_set(job_id=self.job_id, done=done, total=total)
        services.job_event_record(job_id=self.job_id, kind=JobEvent.Kind.PROGRESS,
                                  data={"done": done, "total": total})

    def log(self, msg: str) -> None:
        if self.tee is not None:
            self.tee.log(msg)
        services.job_event_record(job_id=self.job_id, kind=JobEvent.Kind.LOG,
                                  data={"msg": str(msg)[:2000]})

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_cancel_check >= CANCEL_CHECK_EVERY_S:
            self._last_cancel_check = now
            self._cancelled = Job.objects.filter(pk=self.job_id, cancel_requested=True).exists()
        return self._cancelled


class _Heartbeat(threading.Thread):
    """Keeps heartbeat_at fresh while an engine is busy between reporter calls."""

    def __init__(self, job_id: int):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id = job_id
        self.stopped = threading.Event()

    def run(self):
        try:
            while not self.stopped.wait(settings.AUDOBON_HEARTBEAT_SECONDS):
                services.job_heartbeat(job_id=self.job_id)
        finally:
            connection.close()


def _wait_for_row(job_id: int, timeout: float = 10.0) -> Job | None:
    # The enqueue can overtake the commit of a caller's outer transaction.
    deadline = time.monotonic() + timeout
    while True:
        job = Job.objects.filter(pk=job_id).first()
        if job is not None or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def execute_job(job_id: int, *, tee=None, in_worker: bool | None = None, queued: bool = False) -> None:
    """Run one job to its end. `tee` also shows its progress (a command's terminal bar);
    `in_worker` (default: unless tasks run inline) adds the heartbeat thread and
    connection recycling a long run in its own process needs. `queued`: a queue's worker
    took it, so it waits while that queue is paused (a command's own run does not)."""
    # Inline (tests, immediate mode) runs inside the caller's connection and transaction:
    # no connection recycling and no heartbeat thread there.
    if in_worker is None:
        in_worker = not settings.AUDOBON_QUEUE_IMMEDIATE
    if in_worker:
        close_old_connections()
    job = _wait_for_row(job_id)
    if job is None:
        logger.error("job %s does not exist; dropping its queue entry", job_id)
        return
    kind = JOB_KINDS.get(job.kind)
    spec = None
    if kind is not None:
        try:
            spec = kind.spec_model.model_validate(job.spec)
        except Exception:  # validated again below, where the failure is recorded
            spec = None
    if not _wait_until_it_may_start(job, kind, spec, queued=queued):
        return  # failed with the numbers, or left for a worker on a device where it fits
    if not services.job_start(job_id=job_id, worker_id=current_worker_id()):
        return  # cancelled (or taken) before it started
    heartbeat = _Heartbeat(job_id) if in_worker else None
    if heartbeat:
        heartbeat.start()
    usage = UsageWatch().start()
    used = {}
    try:
        if kind is None:
            raise LookupError(f"no worker code for job kind {job.kind!r}")
        spec = spec or kind.spec_model.model_validate(job.spec)
        reporter = JobReporter(job_id, tee=tee)
        try:
            # Names in the spec resolve as the job's owner sees the library.
            with acting_as(job.owner):
                result = kind.run(spec, reporter, job)
        finally:
            reporter.flush()
            usage.stop()
            used = {"peak_rss": usage.peak_rss, "peak_gpu_memory": usage.peak_gpu_memory}
    except JobCancelled:
        services.job_finish(job_id=job_id, status=Job.Status.CANCELLED, **used)
    except Exception as exc:
        logger.exception("job %s (%s) failed", job_id, job.kind)
        services.error_record(exc=exc, where=f"job {job.kind}", job_id=job_id)
        services.job_finish(job_id=job_id, status=Job.Status.FAILED,
                            error=f"{type(exc).__name__}: {exc}",
                            traceback=traceback.format_exc(), **used)
    else:
        services.job_finish(job_id=job_id, status=Job.Status.SUCCEEDED, result=result, **used)
    finally:
        usage.stop()
        if heartbeat:
            heartbeat.stopped.set()
            heartbeat.join(timeout=5)
        if in_worker:
            close_old_connections()


def _wait_until_it_may_start(job: Job, kind, spec, *, queued: bool) -> bool:
    """Hold a queued job while its queue is paused, and until what its kind declares it
    needs fits beside the running jobs, saying why it waits on its page. On a GPU worker, a
    job that fits on another worker's GPU is left for that worker. A job that can never fit
    fails at once with the numbers. False when it was failed or left for another worker."""
    needs = None
    if kind is not None and kind.needs is not None and spec is not None:
        try:
            with acting_as(job.owner):  # names in the spec resolve as the owner sees them
                needs = kind.needs(spec) or None
        except Exception:  # a bad spec or estimate fails in the run itself, with its message
            needs = None
    if needs:
        Job.objects.filter(pk=job.pk).update(needs=needs)
    if not needs and not queued:
        return True
    held = False
    while True:
        row = Job.objects.filter(pk=job.pk).values("status", "waiting_for").first()
        if row is None or row["status"] != Job.Status.QUEUED:
            return True  # cancelled or taken meanwhile: job_start sorts it out
        if STOPPING.is_set():
            return False  # this worker stops; the job goes back on its queue
        if queued and selectors.queue_paused(job.queue):
            verdict, device, why = "wait", None, f"waiting: queue {job.queue} is paused"
        elif needs:
            verdict, device, why = _where_it_fits(job, needs)
        else:
            verdict, device, why = "here", None, ""
        if verdict == "here":
            if row["waiting_for"]:
                services.job_waiting_set(job_id=job.pk, reason="")
            if device:
                services.job_device_set(job_id=job.pk, device=device)
            return True
        if verdict == "never":
            services.job_finish(job_id=job.pk, status=Job.Status.FAILED,
                                error=f"this job cannot run on this machine: it {why}")
            return False
        if verdict == "wait" and needs and _cache_released(needs):
            continue  # models this worker kept for reuse were in the way: look again now
        if why != row["waiting_for"]:  # said once, not at every look
            services.job_waiting_set(job_id=job.pk, reason=why)
        if verdict == "elsewhere":
            # Back on the queue, a moment later: the worker on that device takes it (or this
            # one again, which then decides afresh). This worker is free for other jobs.
            if held:
                Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(worker_id="")
            services.job_requeue(job=job, delay=FIT_POLL_S)
            return False
        if not held and os.environ.get("AUDOBON_WORKER_ID"):
            # Taken off the queue but not started: the worker that holds it is named, so if
            # it dies the sweep puts the job back on its queue (it would be lost otherwise).
            Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(worker_id=current_worker_id())
            held = True
        time.sleep(FIT_POLL_S)


def _cache_released(needs: dict) -> bool:
    """Free the models this worker keeps for reuse when a job waits for room: memory the
    cache holds counts as used, so a job would otherwise wait behind this very worker's
    cache forever. True when something was freed."""
    from apps.monitoring.engine.modelcache import model_cache

    cache = model_cache()
    if not cache.bytes:
        return False
    freed = cache.release(int(needs.get("memory") or 0) or cache.bytes)
    if freed:
        gc.collect()
        logger.info("freed %d bytes of cached models to make room for a waiting job", freed)
    return freed > 0


def _where_it_fits(job: Job, needs: dict) -> tuple[str, str | None, str]:
    """("here" | "elsewhere" | "wait" | "never", the device chosen, why)."""
    here, wanted = worker_device(), needs.get("device") or "cpu"
    if here.startswith("cuda") and wanted.startswith("cuda"):
        devices, busy = services.gpu_machines(here=here, exclude_job=job.pk)
        return placement(needs, devices, here=here, busy=busy)
    machine = services.machine_now(wanted, exclude_job=job.pk)
    if machine is None:
        return "here", None, ""  # that device's memory cannot be read here: nothing to check
    verdict, why = fit_check(needs, machine)
    return {"fits": "here", "wait": "wait", "never": "never"}[verdict], None, why


def _run_job_task(queue_name: str):
    @QUEUES[queue_name].task(name="audobon.run_job")
    def run_job(job_id: int) -> None:
        # Inline (immediate mode) runs in the submitter's request: a paused queue must not
        # hold that; its jobs are not queued anywhere to wait.
        execute_job(job_id, queued=not settings.AUDOBON_QUEUE_IMMEDIATE)

    return run_job


RUN_JOB = {name: _run_job_task(name) for name in QUEUE_NAMES}


@job_kind(name="selftest", spec=SelftestSpec, area="monitoring", label="Self-test",
          queue=lambda spec: spec.queue)
def selftest(spec: SelftestSpec, reporter: JobReporter, job: Job) -> dict:
    return run_selftest(spec, reporter)
