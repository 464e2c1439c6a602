"""Jobs that fit: a kind declares what it needs; a job waits, saying why, until it fits
beside the running jobs, and fails at once with the numbers when it never can."""

import itertools

import pytest
from pydantic import BaseModel

from apps.monitoring import services
from apps.monitoring.engine.fit import Machine, fit_check
from apps.monitoring.jobkinds import JobKind
from apps.monitoring.models import Job, JobEvent

pytestmark = pytest.mark.django_db
GB = 2**30


class _Need(BaseModel):
    gb: float = 1.0


def _kind(temp_job_kind, ran):
    def run(spec, reporter, job):
        ran.append(job.pk)
        return {"ok": True}

    return temp_job_kind(JobKind(name="t-big", label="t", area="monitoring", spec_model=_Need, run=run,
                                 needs=lambda spec: {"memory": int(spec.gb * GB), "device": "cpu"}))


def test_the_verdicts_from_the_numbers():
    m = Machine(memory_total=16 * GB, memory_free=10 * GB, disk_free=50 * GB, reserved_memory=8 * GB)
    assert fit_check({"memory": 4 * GB}, m)[0] == "fits"
    verdict, why = fit_check({"memory": 9 * GB}, m)  # 10 free, but 8 of the 16 are promised
    assert verdict == "wait" and "8.00 GiB free beside the running jobs (8.00 GiB reserved" in why
    verdict, why = fit_check({"memory": 20 * GB}, m)
    assert verdict == "never" and "20.00 GiB of memory on cpu, which has 16.00 GiB in all" in why
    assert fit_check({"disk": 60 * GB}, m)[0] == "never"


def test_a_job_that_can_never_fit_fails_at_once_with_the_numbers(temp_job_kind, monkeypatch):
    ran = []
    _kind(temp_job_kind, ran)
    monkeypatch.setattr(services, "machine_now", lambda device, exclude_job=None: Machine(
        memory_total=8 * GB, memory_free=8 * GB, disk_free=100 * GB))
    job = services.job_submit(kind="t-big", spec={"gb": 64})
    assert job.status == Job.Status.FAILED and ran == []
    assert job.error == ("this job cannot run on this machine: it needs 64.00 GiB of memory on cpu, "
                         "which has 8.00 GiB in all")
    assert job.needs == {"memory": 64 * GB, "device": "cpu"}


def test_a_job_waits_for_room_beside_the_running_ones_then_runs(temp_job_kind, monkeypatch):
    ran = []
    _kind(temp_job_kind, ran)
    monkeypatch.setattr("apps.monitoring.tasks.FIT_POLL_S", 0)
    busy = Machine(memory_total=16 * GB, memory_free=3 * GB, disk_free=100 * GB, reserved_memory=12 * GB)
    free = Machine(memory_total=16 * GB, memory_free=14 * GB, disk_free=100 * GB)
    readings = itertools.chain([busy, busy, busy], itertools.repeat(free))  # the first job ends
    monkeypatch.setattr(services, "machine_now", lambda device, exclude_job=None: next(readings))
    job = services.job_submit(kind="t-big", spec={"gb": 6})
    assert job.status == Job.Status.SUCCEEDED and ran == [job.pk]
    waits = list(job.events.filter(kind=JobEvent.Kind.LOG, data__msg__startswith="waiting for memory")
                 .values_list("data__msg", flat=True))
    assert waits == ["waiting for memory: needs 6.00 GiB on cpu, 3.00 GiB free beside the running jobs "
                     "(12.00 GiB reserved by them)"]  # said once, not at every look
    assert job.waiting_for == ""


def test_running_jobs_reserve_what_they_declared(user):
    Job.objects.create(kind="t", spec={}, queue="heavy", status=Job.Status.RUNNING,
                       needs={"memory": 5 * GB, "disk": GB, "device": "cpu"})
    Job.objects.create(kind="t", spec={}, queue="heavy", status=Job.Status.RUNNING,
                       needs={"memory": 7 * GB, "device": "cuda:0"})
    m = services.machine_now("cpu")
    assert m.reserved_memory == 5 * GB and m.reserved_disk == GB and m.memory_total > 0


def test_a_gpu_whose_memory_cannot_be_read_is_not_checked(monkeypatch):
    monkeypatch.setattr("apps.monitoring.engine.resources.read_gpus", lambda *a, **k: [])
    assert services.machine_now("cuda:0") is None


def test_models_this_worker_keeps_for_reuse_make_room_for_a_waiting_job(temp_job_kind, monkeypatch):
    """Memory the model cache holds counts as used: a job that fits only without it makes the
    worker drop its cached models instead of waiting behind them forever."""
    from apps.monitoring.engine.modelcache import ModelCache, model_cache, model_cache_reset

    ran = []
    _kind(temp_job_kind, ran)
    monkeypatch.setattr("apps.monitoring.tasks.FIT_POLL_S", 0)
    model_cache_reset(ModelCache(8 * GB))
    try:
        cache = model_cache()
        cache.get(("model-a",), lambda: object(), nbytes=lambda _: 5 * GB)
        cache.get(("model-b",), lambda: object(), nbytes=lambda _: 2 * GB)
        # What the machine reads as free shrinks by what the cache holds.
        monkeypatch.setattr(services, "machine_now", lambda device, exclude_job=None: Machine(
            memory_total=16 * GB, memory_free=10 * GB - cache.bytes, disk_free=100 * GB))
        job = services.job_submit(kind="t-big", spec={"gb": 6})
        assert job.status == Job.Status.SUCCEEDED and ran == [job.pk]
        assert cache.bytes < 7 * GB and ("model-a",) not in cache  # the least recently used went first
    finally:
        model_cache_reset()
