"""The job spine's services: submit, run, fail, cancel, retry, recover."""

import os

import pytest
from pydantic import BaseModel

from apps.monitoring import services
from apps.monitoring.engine.reporter import JobCancelled
from apps.monitoring.engine.selftest import SelftestSpec, run_selftest
from apps.monitoring.jobkinds import JobKind
from apps.monitoring.models import Job, JobEvent, WorkerHeartbeat
from apps.monitoring.tasks import JobReporter, execute_job
from audobon_site.queues import QUEUES

pytestmark = pytest.mark.django_db

FAST = {"steps": 4, "step_seconds": 0}


def test_selftest_runs_to_success_and_records_its_history(user):
    job = services.job_submit(kind="selftest", spec=FAST, owner=user)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.progress == 1.0
    assert (job.steps_done, job.steps_total) == (4, 4)
    assert job.result["steps"] == 4
    states = [e.data["status"] for e in job.events.filter(kind=JobEvent.Kind.STATE)]
    assert states == ["queued", "running", "succeeded"]
    metrics = [e.data for e in job.events.filter(kind=JobEvent.Kind.METRIC)]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all("loss" in m["values"] for m in metrics)
    assert job.events.filter(kind=JobEvent.Kind.LOG, data__msg__startswith="selftest:").exists()
    # Defaults are filled into the stored spec, so a retry runs the same thing.
    assert job.spec == {"steps": 4, "step_seconds": 0.0, "queue": "light", "fail_at": None}


@pytest.mark.parametrize(("kind", "spec", "message"), [
    ("no-such-kind", {}, "unknown job kind 'no-such-kind'; known kinds: "),
    ("selftest", {"steps": 0}, "spec.steps: Input should be greater than or equal to 1"),
    ("selftest", {"steps": 2, "colour": "red"}, "spec.colour: Extra inputs are not permitted"),
    ("selftest", {"queue": "gpu"}, "spec.queue: Input should be 'light' or 'heavy'"),
    ("selftest", [1, 2], "must be a JSON object, not list"),
])
def test_bad_kind_or_spec_is_refused_and_nothing_is_queued(kind, spec, message):
    with pytest.raises(services.JobSpecError) as err:
        services.job_submit(kind=kind, spec=spec)
    assert message in str(err.value)
    assert Job.objects.count() == 0
    assert JobEvent.objects.count() == 0


def test_an_exception_fails_the_job_with_its_traceback():
    job = services.job_submit(kind="selftest", spec={**FAST, "fail_at": 3})
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "RuntimeError: selftest failed on purpose at step 3"
    assert "Traceback" in job.traceback and "run_selftest" in job.traceback
    assert job.steps_done == 2
    assert job.events.filter(kind=JobEvent.Kind.STATE, data__status="failed").exists()


def test_cancelling_a_finished_job_says_so_and_changes_nothing():
    job = services.job_submit(kind="selftest", spec=FAST)
    events_before = JobEvent.objects.count()
    with pytest.raises(services.JobStateError, match=f"job {job.pk} already succeeded"):
        services.job_cancel(job=job)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and not job.cancel_requested
    assert JobEvent.objects.count() == events_before


def test_a_queued_job_cancelled_before_a_worker_takes_it_never_runs():
    job = Job.objects.create(kind="selftest", spec=FAST, queue="light")
    services.job_cancel(job=job)
    execute_job(job.pk)  # the worker finally gets to it
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job.started_at is None
    assert not job.events.filter(kind=JobEvent.Kind.STATE, data__status="running").exists()


class _Empty(BaseModel):
    pass


def test_a_running_job_stops_at_its_next_step_when_cancelled(temp_job_kind, monkeypatch):
    monkeypatch.setattr("apps.monitoring.tasks.CANCEL_CHECK_EVERY_S", 0)
    seen = []

    def run(spec, reporter, job):
        for i in range(1, 100):
            if i == 3:
                services.job_cancel(job=Job.objects.get(pk=job.pk))
            if reporter.cancelled():
                raise JobCancelled
            seen.append(i)
            reporter.step(i, 100)
        return {}

    temp_job_kind(JobKind(name="t-cancel", label="t", area="monitoring", spec_model=_Empty,
                          run=run))
    job = services.job_submit(kind="t-cancel", spec={})
    assert job.status == Job.Status.CANCELLED
    assert seen == [1, 2]
    assert job.events.filter(kind=JobEvent.Kind.LOG, data__msg="cancel requested").exists()


def test_selftest_engine_honours_cancel():
    class CancelAfterTwo:
        def __init__(self):
            self.steps = []

        def step(self, done, total=None, **metrics):
            self.steps.append(done)

        def log(self, msg):
            pass

        def cancelled(self):
            return len(self.steps) >= 2

    reporter = CancelAfterTwo()
    with pytest.raises(JobCancelled):
        run_selftest(SelftestSpec(steps=10, step_seconds=0), reporter)
    assert reporter.steps == [1, 2]


def test_retry_runs_a_finished_job_again_and_refuses_an_unfinished_one(user):
    first = services.job_submit(kind="selftest", spec={**FAST, "fail_at": 1}, owner=user)
    again = services.job_retry(job=first)
    assert again.pk != first.pk and again.retry_of_id == first.pk
    assert again.spec == first.spec and again.owner == user
    running = Job.objects.create(kind="selftest", spec=FAST, queue="light",
                                 status=Job.Status.RUNNING)
    with pytest.raises(services.JobStateError, match="only a finished job can be retried"):
        services.job_retry(job=running)


def test_jobs_of_a_dead_worker_become_interrupted_and_live_ones_stay():
    from django.utils import timezone

    dead_pid = 2**22 + 12345  # above the default pid_max
    dead = Job.objects.create(kind="selftest", queue="light", status=Job.Status.RUNNING,
                              worker_id=f"{services.HOSTNAME}:{dead_pid}:light",
                              heartbeat_at=timezone.now())
    alive = Job.objects.create(kind="selftest", queue="light", status=Job.Status.RUNNING,
                               worker_id=f"{services.HOSTNAME}:{os.getpid()}:light",
                               heartbeat_at=timezone.now())
    silent_remote = Job.objects.create(
        kind="selftest", queue="light", status=Job.Status.RUNNING,
        worker_id="elsewhere:42:heavy", heartbeat_at=timezone.now() - timezone.timedelta(minutes=5),
    )
    assert sorted(services.jobs_interrupt_orphans()) == sorted([dead.pk, silent_remote.pk])
    for job, status in ((dead, "interrupted"), (alive, "running"), (silent_remote, "interrupted")):
        job.refresh_from_db()
        assert job.status == status
    dead.refresh_from_db()
    assert dead.error.startswith("interrupted")


def test_a_stopping_worker_interrupts_its_jobs_and_leaves_the_others():
    from django.utils import timezone

    now = timezone.now()
    services.worker_heartbeat(worker_id="vm:1:heavy", queue="heavy", started_at=now)
    mine = Job.objects.create(kind="selftest", queue="heavy", status=Job.Status.RUNNING,
                              worker_id="vm:1:heavy", heartbeat_at=now)
    other = Job.objects.create(kind="selftest", queue="light", status=Job.Status.RUNNING,
                               worker_id="vm:2:light", heartbeat_at=now)
    assert services.worker_gone(worker_id="vm:1:heavy") == [mine.pk]
    mine.refresh_from_db()
    other.refresh_from_db()
    assert (mine.status, other.status) == ("interrupted", "running")
    assert not WorkerHeartbeat.objects.filter(worker_id="vm:1:heavy").exists()


def test_heavy_and_light_jobs_go_to_their_own_queues_in_priority_order():
    light = QUEUES["light"]
    heavy = QUEUES["heavy"]
    light.immediate = heavy.immediate = False  # real SqliteHuey storage, nothing consumes
    try:
        light.flush()
        heavy.flush()
        low = services.job_submit(kind="selftest", spec=FAST, priority=0)
        high = services.job_submit(kind="selftest", spec=FAST, priority=10)
        mid = services.job_submit(kind="selftest", spec=FAST, priority=5)
        big = services.job_submit(kind="selftest", spec={**FAST, "queue": "heavy"})
        assert (low.queue, big.queue) == ("light", "heavy")
        assert all(j.status == "queued" for j in (low, high, mid, big))
        order = [light.dequeue().args[0] for _ in range(3)]
        assert order == [high.pk, mid.pk, low.pk]
        assert heavy.dequeue().args[0] == big.pk
        assert light.dequeue() is None
    finally:
        light.flush()
        heavy.flush()
        light.immediate = heavy.immediate = True


def test_reporter_throttles_progress_rows_but_keeps_every_metric():
    job = Job.objects.create(kind="selftest", queue="light", status=Job.Status.RUNNING)
    reporter = JobReporter(job.pk)
    for i in range(1, 51):
        reporter.step(i, 50, loss=1 / i)
    job.refresh_from_db()
    assert (job.steps_done, job.progress) == (50, 1.0)
    assert job.events.filter(kind=JobEvent.Kind.METRIC).count() == 50
    assert 1 <= job.events.filter(kind=JobEvent.Kind.PROGRESS).count() < 50


def test_a_job_records_the_peak_memory_of_its_run(temp_job_kind):
    """The peak RSS of the process tree that ran the job: here, what the job allocated on
    top of what the process already held (kept alive past the run, so the last sample at
    the job's end sees it whatever the timing)."""
    import psutil
    import torch

    from apps.monitoring.engine.usage import tree_rss

    held = []

    def run(spec, reporter, job):
        held.append(bytearray(b"\x01") * (300 * 2**20))  # written, so resident
        return {}

    temp_job_kind(JobKind(name="t-mem", label="t", area="monitoring", spec_model=_Empty, run=run))
    before = tree_rss(psutil.Process())
    job = services.job_submit(kind="t-mem", spec={})
    assert job.status == Job.Status.SUCCEEDED
    assert job.peak_rss >= before + 250 * 2**20
    if not torch.cuda.is_available():
        assert job.peak_gpu_memory is None
    failed = services.job_submit(kind="selftest", spec={**FAST, "fail_at": 2})
    assert failed.status == Job.Status.FAILED and failed.peak_rss > 0  # failures are measured too
