"""Pausing a queue: its workers start no new job, its queued jobs keep their places and say
why they wait, and start on resume; admins pause and resume from the jobs page or the shell."""

import json
import threading

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.monitoring import services, tasks
from apps.monitoring.models import Job, QueueState
from tests.proc import audobon, audobon_env

pytestmark = pytest.mark.django_db


def _queued(owner, steps=1):
    return services.job_submit(kind="selftest", spec={"steps": steps, "step_seconds": 0, "queue": "heavy"},
                               owner=owner, enqueue=False)


def test_a_paused_queue_holds_its_job_which_starts_on_resume(client, user, monkeypatch):
    client.force_login(user)
    services.queue_pause(name="heavy")
    job = _queued(user)
    seen = []

    def look_then_resume(seconds):  # the worker's wait between looks
        job.refresh_from_db()
        seen.append(job.status)
        page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
        assert "waiting: queue heavy is paused" in page
        if len(seen) == 2:
            services.queue_resume(name="heavy")

    monkeypatch.setattr(tasks.time, "sleep", look_then_resume)
    tasks.execute_job(job.pk, queued=True)
    job.refresh_from_db()
    assert seen == ["queued", "queued"] and job.status == Job.Status.SUCCEEDED
    assert job.waiting_for == ""
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert 'id="job-waiting"' not in page
    history = list(job.events.filter(kind="log").values_list("data__msg", flat=True))
    assert "waiting: queue heavy is paused" in history and "queue heavy resumed" in history


def test_a_job_waiting_on_a_paused_queue_can_be_cancelled(user, monkeypatch):
    services.queue_pause(name="heavy")
    job = _queued(user)
    monkeypatch.setattr(tasks.time, "sleep", lambda s: services.job_cancel(job=job))
    tasks.execute_job(job.pk, queued=True)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.started_at is None


def test_pausing_one_queue_leaves_the_other_running(user, monkeypatch):
    services.queue_pause(name="heavy")
    job = services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0}, enqueue=False)
    monkeypatch.setattr(tasks.time, "sleep", lambda s: pytest.fail("a light job waited"))
    tasks.execute_job(job.pk, queued=True)
    job.refresh_from_db()
    assert job.queue == "light" and job.status == Job.Status.SUCCEEDED


def test_a_command_run_in_its_own_process_is_not_held(user, monkeypatch):
    """`audobon finetune` and `try_it` run their job in the foreground, not from a queue."""
    services.queue_pause(name="heavy")
    job = _queued(user)
    monkeypatch.setattr(tasks.time, "sleep", lambda s: pytest.fail("waited"))
    tasks.execute_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_the_jobs_page_shows_each_queue_and_staff_pause_and_resume(client, user):
    client.force_login(user)  # the home's admin
    page = client.get(reverse("monitoring:job_list")).content.decode()
    assert 'id="queue-heavy" data-paused="false"' in page and 'id="queue-light"' in page
    assert reverse("monitoring:queue_pause", args=["heavy"]) in page
    resp = client.post(reverse("monitoring:queue_pause", args=["heavy"]), follow=True)
    page = resp.content.decode()
    assert 'id="queue-heavy" data-paused="true"' in page and "paused</span> by ada" in page
    assert reverse("monitoring:queue_resume", args=["heavy"]) in page
    assert QueueState.objects.get(name="heavy").paused
    client.post(reverse("monitoring:queue_resume", args=["heavy"]))
    assert not QueueState.objects.get(name="heavy").paused
    assert client.post(reverse("monitoring:queue_pause", args=["nope"])).status_code == 404


def test_others_see_the_queues_but_may_not_pause_them(client, other_user):
    client.force_login(other_user)
    page = client.get(reverse("monitoring:job_list")).content.decode()
    assert 'id="queue-heavy"' in page and "queue_pause" not in page
    assert reverse("monitoring:queue_pause", args=["heavy"]) not in page
    assert client.post(reverse("monitoring:queue_pause", args=["heavy"])).status_code == 403
    assert not QueueState.objects.filter(paused=True).exists()


def test_a_queued_job_of_a_paused_queue_says_so_before_a_worker_took_it(client, user):
    client.force_login(user)
    job = _queued(user)
    services.queue_pause(name="heavy", user=user)
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert "waiting: queue heavy is paused" in page
    assert "queue heavy paused by ada" in page  # in its history, pushed to an open page too


def test_queue_commands(capsys):
    call_command("queue", "pause", "heavy")
    assert capsys.readouterr().out.strip().startswith("queue heavy: paused")
    call_command("queue", "list", "--json")
    listed = {q["name"]: q for q in json.loads(capsys.readouterr().out)}
    assert listed["heavy"]["paused"] is True and listed["light"]["paused"] is False
    call_command("queue", "resume", "heavy", "--json")
    assert json.loads(capsys.readouterr().out)["paused"] is False
    with pytest.raises(CommandError, match="no queue named 'gpu'; the queues are heavy, light"):
        call_command("queue", "pause", "gpu")


def test_an_unknown_queue_is_one_line_and_a_failing_exit(tmp_path):
    done = audobon(audobon_env(tmp_path / "home"), "queue", "pause", "gpu")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    said = [line for line in done.stderr.splitlines() if not line.startswith("audobon: first use")]
    assert said == ["CommandError: no queue named 'gpu'; the queues are heavy, light"]


def test_a_real_worker_holds_a_paused_queue_across_a_restart_until_it_is_resumed(tmp_path):
    """Across processes: the pause is in the database every worker reads, and a job held by a
    worker that stops goes back on the queue for the next one."""
    import sqlite3
    import subprocess
    import sys
    import time

    from tests.proc import REPO

    home = tmp_path / "home"
    env = audobon_env(home)
    assert audobon(env, "queue", "pause", "heavy").returncode == 0
    submitted = audobon(env, "jobs", "submit", "selftest", "--spec",
                        '{"steps": 2, "step_seconds": 0, "queue": "heavy"}')
    job_id = int(submitted.stdout.strip().splitlines()[-1])

    def start_worker():
        return subprocess.Popen([sys.executable, "-m", "audobon_site.cli", "run_worker", "--queue", "heavy"],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(worker):
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()

    def row():
        with sqlite3.connect(home / "db.sqlite3", timeout=30) as db:
            return db.execute("SELECT status, waiting_for, worker_id FROM monitoring_job WHERE id = ?",
                              (job_id,)).fetchone()

    def until(predicate, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(row()):
                return
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} is {row()}")

    worker = start_worker()
    try:
        # the worker took it off the queue and holds it, saying why
        until(lambda r: r[1] == "waiting: queue heavy is paused" and r[2].endswith(f":{worker.pid}:heavy"))
        stop(worker)
        assert row()[:1] + row()[2:] == ("queued", "")  # back on the queue, not lost
        worker = start_worker()
        until(lambda r: r[2].endswith(f":{worker.pid}:heavy"))  # the next worker holds it
        assert row()[0] == "queued"
        assert audobon(env, "queue", "resume", "heavy").returncode == 0
        until(lambda r: r[0] == "succeeded", timeout=60)
    finally:
        stop(worker)


def test_a_job_held_by_a_worker_that_dies_goes_back_on_its_queue(user, monkeypatch):
    """A worker takes a job off the queue to wait on the paused queue; if that worker dies
    or stops, the job must not be lost: it is named as held, and the sweep requeues it."""
    services.queue_pause(name="heavy")
    job = _queued(user)
    dead = f"{services.HOSTNAME}:{2**22 + 4321}:heavy"  # a pid above the default pid_max
    monkeypatch.setenv("AUDOBON_WORKER_ID", dead)
    held_by = []

    def stop_the_worker(seconds):
        job.refresh_from_db()
        held_by.append(job.worker_id)
        tasks.STOPPING.set()

    monkeypatch.setattr(tasks.time, "sleep", stop_the_worker)
    monkeypatch.setattr(tasks, "STOPPING", threading.Event())
    tasks.execute_job(job.pk, queued=True)
    assert held_by == [dead]
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.started_at is None
    requeued = []
    monkeypatch.setattr(services, "_enqueue", lambda j: requeued.append(j.pk))
    services.jobs_interrupt_orphans()  # the monitor's sweep, or the next worker's start
    job.refresh_from_db()
    assert requeued == [job.pk] and job.worker_id == "" and job.status == Job.Status.QUEUED
    assert job.events.filter(data__msg__icontains="stopped while this job waited").exists()
    services.jobs_interrupt_orphans()
    assert requeued == [job.pk]  # once


def test_a_stopping_worker_puts_the_jobs_it_held_back_on_the_queue(user, monkeypatch):
    job = _queued(user)
    Job.objects.filter(pk=job.pk).update(worker_id="vm:7:heavy")
    requeued = []
    monkeypatch.setattr(services, "_enqueue", lambda j: requeued.append(j.pk))
    assert services.worker_gone(worker_id="vm:7:heavy") == []  # nothing interrupted
    assert requeued == [job.pk]
