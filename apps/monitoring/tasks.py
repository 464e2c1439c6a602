"""The one task wrapper every job kind runs through, and the selftest kind.

`execute_job` claims the job, heartbeats while it runs, turns reporter calls into
JobEvents, and ends it as succeeded, failed (with traceback), or cancelled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback

from django.conf import settings
from django.db import close_old_connections, connection

from apps.monitoring import services
from apps.monitoring.engine.fit import fit_check
from apps.monitoring.engine.reporter import JobCancelled
from apps.monitoring.engine.selftest import SelftestSpec, run_selftest
from apps.monitoring.engine.usage import UsageWatch
from apps.monitoring.jobkinds import JOB_KINDS, job_kind
from apps.monitoring.models import Job, JobEvent
from audobon_site.queues import QUEUE_NAMES, QUEUES

logger = logging.getLogger(__name__)

# Progress rows are written at most this often; metrics and logs are always kept.
PROGRESS_EVERY_S = 0.1
CANCEL_CHECK_EVERY_S = 0.2
FIT_POLL_S = 2.0  # how often a job waiting for room looks again


def current_worker_id() -> str:
    return os.environ.get("AUDOBON_WORKER_ID") or f"inline:{os.getpid()}"


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


def execute_job(job_id: int, *, tee=None, in_worker: bool | None = None) -> None:
    """Run one job to its end. `tee` also shows its progress (a command's terminal bar);
    `in_worker` (default: unless tasks run inline) adds the heartbeat thread and
    connection recycling a long run in its own process needs."""
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
    if kind is not None and kind.needs is not None and spec is not None \
            and not _wait_until_it_fits(job, kind, spec):
        return  # it can never fit here: failed with the numbers
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


def _wait_until_it_fits(job: Job, kind, spec) -> bool:
    """Hold a queued job until what its kind declares it needs fits beside the running
    jobs, saying why it waits on its page; fail it at once when it can never fit here.
    False when it was failed."""
    try:
        needs = kind.needs(spec)
    except Exception:  # a bad spec or estimate fails in the run itself, with its message
        return True
    if not needs:
        return True
    Job.objects.filter(pk=job.pk).update(needs=needs)
    said = ""
    while True:
        status = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        if status != Job.Status.QUEUED:
            return True  # cancelled or taken meanwhile: job_start sorts it out
        machine = services.machine_now(needs.get("device"), exclude_job=job.pk)
        if machine is None:
            return True  # that device's memory cannot be read here: nothing to check against
        verdict, why = fit_check(needs, machine)
        if verdict == "fits":
            if said:
                services.job_waiting_set(job_id=job.pk, reason="")
            return True
        if verdict == "never":
            services.job_finish(job_id=job.pk, status=Job.Status.FAILED,
                                error=f"this job cannot run on this machine: it {why}")
            return False
        if why != said:
            services.job_waiting_set(job_id=job.pk, reason=why)
            said = why
        time.sleep(FIT_POLL_S)


def _run_job_task(queue_name: str):
    @QUEUES[queue_name].task(name="audobon.run_job")
    def run_job(job_id: int) -> None:
        execute_job(job_id)

    return run_job


RUN_JOB = {name: _run_job_task(name) for name in QUEUE_NAMES}


@job_kind(name="selftest", spec=SelftestSpec, area="monitoring", label="Self-test",
          queue=lambda spec: spec.queue)
def selftest(spec: SelftestSpec, reporter: JobReporter, job: Job) -> dict:
    return run_selftest(spec, reporter)
