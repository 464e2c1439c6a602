"""Several GPUs: a heavy job goes to a device where it fits; a worker whose GPU is too small
(or too full now) leaves it for the worker of one where it fits; nowhere at all fails it with
the numbers. The device chosen is recorded and shown on the job page."""

import pytest
from django.urls import reverse
from django.utils import timezone
from pydantic import BaseModel

from apps.monitoring import services, tasks
from apps.monitoring.engine.fit import Machine, place, placement
from apps.monitoring.jobkinds import JobKind
from apps.monitoring.models import Job, WorkerHeartbeat

GB = 2**30


def gpu(total, free, reserved=0):
    return Machine(memory_total=total * GB, memory_free=free * GB, disk_free=500 * GB,
                   reserved_memory=reserved * GB)


NEEDS = {"memory": 20 * GB, "device": "cuda:0"}


def test_place_picks_the_device_with_the_most_room_left():
    devices = {"cuda:0": gpu(24, 10), "cuda:1": gpu(80, 70), "cuda:2": gpu(48, 30)}
    assert place(NEEDS, devices) == "cuda:1"
    assert place(NEEDS, {"cuda:0": gpu(24, 10), "cuda:2": gpu(48, 30)}) == "cuda:2"
    assert place(NEEDS, {"cuda:0": gpu(24, 10), "cuda:3": None}) is None  # unreadable: not chosen
    assert place(NEEDS, {"cuda:1": gpu(80, 70, reserved=65)}) is None  # promised to running jobs


def test_placement_seen_from_each_worker():
    devices = {"cuda:0": gpu(24, 22), "cuda:1": gpu(80, 75)}
    assert placement(NEEDS, devices, here="cuda:0") == ("here", "cuda:0", "")  # fits here: no hop
    busy0 = {"cuda:0": gpu(24, 4, reserved=20), "cuda:1": gpu(80, 75)}
    verdict, device, why = placement(NEEDS, busy0, here="cuda:0")
    assert (verdict, device) == ("elsewhere", "cuda:1")
    assert why.startswith("fits on cuda:1 now, not on cuda:0")
    # cuda:1's worker is busy: wait here for room rather than hand it to a busy worker
    assert placement(NEEDS, busy0, here="cuda:0", busy={"cuda:1"})[0] == "wait"
    # too big for this GPU ever, but not for the other one once it has room: leave it there
    small = {"cuda:0": gpu(16, 16), "cuda:1": gpu(80, 10, reserved=70)}
    verdict, device, why = placement(NEEDS, small, here="cuda:0")
    assert (verdict, device) == ("elsewhere", "cuda:1") and "waiting for room on cuda:1" in why
    verdict, device, why = placement({"memory": 200 * GB}, devices, here="cuda:1")
    assert (verdict, device) == ("never", None)
    assert why == "needs 200.00 GiB of GPU memory; cuda:0 has 24.00 GiB in all, cuda:1 has 80.00 GiB in all"
    assert placement(NEEDS, {"cuda:0": None, "cuda:1": gpu(80, 75)}, here="cuda:0")[0] == "here"  # unreadable


class _Spec(BaseModel):
    gb: float = 20


@pytest.fixture
def two_gpus(temp_job_kind, monkeypatch, db):
    """A machine with a 16 GiB cuda:0 and an 80 GiB cuda:1, a heavy worker on each."""
    ran = []
    temp_job_kind(JobKind(name="t-gpu", label="t", area="monitoring", spec_model=_Spec, queue="heavy",
                          run=lambda spec, reporter, job: ran.append(job.pk) or {"ok": True},
                          needs=lambda spec: {"memory": int(spec.gb * GB), "device": "cuda:0"}))
    readings = {"cuda:0": gpu(16, 15), "cuda:1": gpu(80, 79)}
    monkeypatch.setattr(services, "machine_now", lambda device, exclude_job=None: readings.get(device))
    now = timezone.now()
    for dev in ("0", "1"):
        WorkerHeartbeat.objects.create(worker_id=f"box:{dev}:heavy", queue="heavy", host="box", pid=1,
                                       device=f"cuda:{dev}", started_at=now, last_seen=now)
    requeued = []
    monkeypatch.setattr(services, "job_requeue", lambda job, delay: requeued.append(job.pk))
    return ran, requeued


def test_a_job_too_big_for_this_gpu_is_left_for_the_one_it_fits(two_gpus, monkeypatch, client, user):
    ran, requeued = two_gpus
    job = services.job_submit(kind="t-gpu", spec={"gb": 20}, owner=user, enqueue=False)
    monkeypatch.setenv("AUDOBON_WORKER_DEVICE", "cuda:0")
    tasks.execute_job(job.pk, queued=True)  # the cuda:0 worker takes it off the queue
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and ran == [] and requeued == [job.pk]
    assert job.waiting_for.startswith(
        "fits on cuda:1 now, not on cuda:0: needs 20.00 GiB of memory on cuda:0")

    monkeypatch.setenv("AUDOBON_WORKER_DEVICE", "cuda:1")
    tasks.execute_job(job.pk, queued=True)  # the cuda:1 worker takes it next
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and ran == [job.pk] and requeued == [job.pk]
    assert job.needs["device"] == "cuda:1" and job.waiting_for == ""
    client.force_login(user)
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert 'id="job-device">ran on GPU cuda:1' in page


def test_a_job_that_fits_on_no_gpu_fails_with_the_numbers(two_gpus, monkeypatch, user):
    ran, requeued = two_gpus
    monkeypatch.setenv("AUDOBON_WORKER_DEVICE", "cuda:0")
    job = services.job_submit(kind="t-gpu", spec={"gb": 100}, owner=user, enqueue=False)
    tasks.execute_job(job.pk, queued=True)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and ran == [] and requeued == []
    assert job.error == ("this job cannot run on this machine: it needs 100.00 GiB of GPU memory; "
                         "cuda:0 has 16.00 GiB in all, cuda:1 has 80.00 GiB in all")


def test_a_placed_job_reserves_memory_on_its_own_gpu(db, monkeypatch):
    monkeypatch.setattr("apps.monitoring.engine.resources.read_gpus", lambda *a, **k: [
        {"index": i, "mem_total_mb": 81920.0, "mem_used_mb": 1024.0} for i in (0, 1)])
    Job.objects.create(kind="t", spec={}, queue="heavy", status=Job.Status.RUNNING,
                       needs={"memory": 30 * GB, "device": "cuda:1"})
    assert services.machine_now("cuda:1").reserved_memory == 30 * GB
    assert services.machine_now("cuda:0").reserved_memory == 0
    assert services.machine_now("cuda:1").memory_free == 79 * GB


def test_up_tells_each_heavy_worker_its_gpu(monkeypatch):
    from apps.monitoring.management.commands.up import Command
    from audobon_site.hosts import bind_plan

    monkeypatch.setenv("AUDOBON_DEVICES", "0,1")
    children = {c.name: c.env for c in Command()._children(bind_plan("127.0.0.1"), 8000)}
    assert children["heavy-worker-1"] == {"CUDA_VISIBLE_DEVICES": "1", "AUDOBON_WORKER_DEVICE": "cuda:1"}
    assert children["heavy-worker-0"]["AUDOBON_WORKER_DEVICE"] == "cuda:0"
