"""Faults, as the user sees them: a worker killed, the disk filling up, two heavy jobs that do
not fit together, and a machine without a GPU."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import namedtuple
from datetime import UTC, datetime

import pytest
from django.urls import reverse
from pydantic import BaseModel

from apps.monitoring import services, tasks
from apps.monitoring.jobkinds import JobKind
from apps.monitoring.models import Job, ResourceSample
from tests.proc import REPO, audobon, audobon_env, processes_with_home

GB = 2**30
STALE_DEFAULT_S = 20  # AUDOBON_WORKER_STALE_SECONDS's default

# A page as a logged-in admin sees it, rendered in the home of the processes under test.
RENDER_PAGE = """
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
admin = get_user_model().objects.create_superuser(username="faults", password="pw-faults-123456")
client = Client()
client.force_login(admin)
print(client.get("/", HTTP_HOST="localhost").content.decode())
"""


def _worker(env, queue="heavy"):
    return subprocess.Popen([sys.executable, "-m", "audobon_site.cli", "run_worker", "--queue", queue],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _job_status(home, job_id) -> str | None:
    with sqlite3.connect(home / "db.sqlite3", timeout=30) as db:
        row = db.execute("SELECT status FROM monitoring_job WHERE id = ?", (job_id,)).fetchone()
    return row[0] if row else None


def _until(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_a_worker_killed_is_shown_dead_its_job_interrupted_and_a_banner_shown(tmp_path):
    home = tmp_path / "home"
    # The defaults of `audobon up`: a sample (and sweep) every 5 s, a worker stale after 20 s.
    env = audobon_env(home, AUDOBON_SAMPLE_SECONDS="5")
    submitted = audobon(env, "jobs", "submit", "selftest", "--spec",
                        '{"steps": 100000, "step_seconds": 0.05, "queue": "heavy"}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip().splitlines()[-1])
    worker = _worker(env)
    monitor = subprocess.Popen([sys.executable, "-m", "audobon_site.cli", "run_monitor"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _until("the job starts", lambda: _job_status(home, job_id) == "running", 120)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        killed = time.monotonic()

        def shown_dead():  # what status, the dashboard and the banner go by: the heartbeat row's age
            with sqlite3.connect(home / "db.sqlite3", timeout=30) as db:
                seen, = db.execute("SELECT last_seen FROM monitoring_workerheartbeat WHERE worker_id LIKE ?",
                                   (f"%:{worker.pid}:heavy",)).fetchone()
            age = datetime.now(UTC) - datetime.fromisoformat(seen).replace(tzinfo=UTC)
            return age.total_seconds() > STALE_DEFAULT_S

        _until("the job is interrupted", lambda: _job_status(home, job_id) == "interrupted", 30)
        _until("the worker is shown dead", shown_dead, 30 - (time.monotonic() - killed))
        assert time.monotonic() - killed < 30
        out = audobon(env, "status", "--json")
        workers = json.loads(out.stdout)["workers"]
        assert [w["alive"] for w in workers if w["queue"] == "heavy"] == [False]
        page = subprocess.run([sys.executable, "-c", RENDER_PAGE], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert page.returncode == 0, page.stderr
        assert f"The heavy worker {services.HOSTNAME}:{worker.pid}:heavy stopped reporting" in page.stdout
        assert "restart `audobon up`" in page.stdout
        with sqlite3.connect(home / "db.sqlite3", timeout=30) as db:
            error, = db.execute("SELECT error FROM monitoring_job WHERE id = ?", (job_id,)).fetchone()
        assert error == "interrupted: its worker is gone"
    finally:
        if worker.poll() is None:
            worker.kill()
        monitor.terminate()
        try:
            monitor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            monitor.kill()
        for proc in processes_with_home(home):
            proc.kill()


class _Need(BaseModel):
    memory_gb: float = 0
    disk_gb: float = 0


@pytest.fixture
def heavy_kind(temp_job_kind):
    ran = []
    temp_job_kind(JobKind(
        name="t-heavy", label="t", area="monitoring", spec_model=_Need, queue="heavy",
        run=lambda spec, reporter, job: ran.append(job.pk) or {"ok": True},
        needs=lambda spec: {"memory": int(spec.memory_gb * GB), "disk": int(spec.disk_gb * GB),
                            "device": "cpu"}))
    return ran


DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.mark.django_db
def test_a_full_disk_keeps_a_new_heavy_job_from_starting_with_the_reason(heavy_kind, client, user,
                                                                          monkeypatch):
    monkeypatch.setattr("shutil.disk_usage", lambda path: DiskUsage(500 * GB, 498 * GB, 2 * GB))
    client.force_login(user)
    job = services.job_submit(kind="t-heavy", spec={"disk_gb": 10}, owner=user)
    assert job.status == Job.Status.FAILED and job.started_at is None and heavy_kind == []
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert ("this job cannot run on this machine: it needs 10.00 GiB of disk in the home, "
            "2.00 GiB free") in page
    assert "Disk space is low: 2.0 GiB free" in page  # and every page says the disk is low


@pytest.mark.django_db
def test_disk_promised_to_a_running_job_makes_the_next_one_wait(heavy_kind, client, user, monkeypatch):
    monkeypatch.setattr("shutil.disk_usage", lambda path: DiskUsage(500 * GB, 492 * GB, 8 * GB))
    first = services.job_submit(kind="t-heavy", spec={"disk_gb": 5}, enqueue=False)
    Job.objects.filter(pk=first.pk).update(needs={"disk": 5 * GB, "device": "cpu"})
    services.job_start(job_id=first.pk, worker_id="box:1:heavy")
    second = services.job_submit(kind="t-heavy", spec={"disk_gb": 4}, owner=user, enqueue=False)
    client.force_login(user)
    pages = []

    def look_then_end_the_first(seconds):
        pages.append(client.get(reverse("monitoring:job_detail", args=[second.pk])).content.decode())
        services.job_finish(job_id=first.pk, status=Job.Status.SUCCEEDED)

    monkeypatch.setattr(tasks.time, "sleep", look_then_end_the_first)
    tasks.execute_job(second.pk, queued=True)
    assert len(pages) == 1
    assert ('id="job-waiting">waiting for disk: needs 4.00 GiB, 3.00 GiB free beside the running '
            'jobs') in pages[0]
    second.refresh_from_db()
    assert second.status == Job.Status.SUCCEEDED


@pytest.mark.django_db
def test_two_heavy_jobs_that_do_not_fit_together_run_one_after_the_other(heavy_kind, client, user,
                                                                         monkeypatch):
    """The running job's declared memory is promised to it, though it has not grown yet: the
    second waits with the reason on its page, and starts when the first ends."""
    Memory = namedtuple("Memory", "total available")
    monkeypatch.setattr(services.psutil, "virtual_memory", lambda: Memory(16 * GB, 14 * GB))
    first = services.job_submit(kind="t-heavy", spec={"memory_gb": 10}, owner=user, enqueue=False)
    Job.objects.filter(pk=first.pk).update(needs={"memory": 10 * GB, "device": "cpu"})
    services.job_start(job_id=first.pk, worker_id="box:1:heavy")
    second = services.job_submit(kind="t-heavy", spec={"memory_gb": 10}, owner=user, enqueue=False)
    client.force_login(user)
    looks = []

    def look(seconds):
        second.refresh_from_db()
        page = client.get(reverse("monitoring:job_detail", args=[second.pk])).content.decode()
        looks.append((second.status, page))
        if len(looks) == 2:
            services.job_finish(job_id=first.pk, status=Job.Status.SUCCEEDED)

    monkeypatch.setattr(tasks.time, "sleep", look)
    tasks.execute_job(second.pk, queued=True)
    assert [status for status, _ in looks] == ["queued", "queued"]
    assert ('id="job-waiting">waiting for memory: needs 10.00 GiB on cpu, 6.00 GiB free beside the '
            "running jobs "
            "(10.00 GiB reserved by them)") in looks[0][1]
    second.refresh_from_db()
    assert second.status == Job.Status.SUCCEEDED and heavy_kind == [second.pk]
    assert second.started_at >= Job.objects.get(pk=first.pk).finished_at


@pytest.mark.django_db
def test_without_a_gpu_the_pages_say_the_work_runs_on_the_cpu(client, user):
    ResourceSample.objects.create(cpu_percent=5, ram_used=GB, ram_total=8 * GB, disk_free=50 * GB,
                                  disk_total=100 * GB, gpus=[])
    client.force_login(user)
    dashboard = client.get(reverse("monitoring:dashboard")).content.decode()
    assert "No GPU is visible: jobs run on the CPU." in dashboard
    job = services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0, "queue": "heavy"},
                              owner=user)
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert 'id="job-device">ran on the CPU (no GPU is visible on this machine)' in page
    # a GPU comes back: the note goes
    t4 = {"index": 0, "name": "T4", "util_percent": 0, "mem_used_mb": 0, "mem_total_mb": 15360, "temp_c": 40}
    ResourceSample.objects.create(cpu_percent=5, ram_used=GB, ram_total=8 * GB, disk_free=50 * GB,
                                  disk_total=100 * GB, gpus=[t4])
    assert "No GPU is visible" not in client.get(reverse("monitoring:dashboard")).content.decode()
