"""The job websocket: current state first, then new events; 4403 for a job you may not see."""

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from apps.monitoring import services
from apps.monitoring.models import Job, JobEvent
from apps.monitoring.routing import websocket_urlpatterns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

app = URLRouter(websocket_urlpatterns)


def _running_job(owner):
    job = Job.objects.create(kind="selftest", spec={"steps": 10}, queue="light", owner=owner)
    services.job_start(job_id=job.pk, worker_id="test:1:light")
    return job


async def _connect(job_id, user, query=""):
    comm = WebsocketCommunicator(app, f"/ws/jobs/{job_id}/{query}")
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


async def test_owner_gets_the_current_state_then_each_new_event(user):
    job = await database_sync_to_async(_running_job)(user)
    comm = await _connect(job.pk, user)
    first = await comm.receive_from(timeout=3)
    assert 'id="job-live"' in first and 'data-status="running"' in first
    assert 'data-percent="0.0"' in first

    def progress():
        services.job_progress_set(job_id=job.pk, done=4, total=10)
        services.job_event_record(job_id=job.pk, kind=JobEvent.Kind.PROGRESS,
                                  data={"done": 4, "total": 10})
        services.job_event_record(job_id=job.pk, kind=JobEvent.Kind.LOG,
                                  data={"msg": "halfway <there>"})

    await database_sync_to_async(progress)()
    update = await comm.receive_from(timeout=3)
    assert 'data-percent="40.0"' in update
    assert "halfway &lt;there&gt;" in update  # escaped, appended to the history too
    assert 'id="job-history" hx-swap-oob="beforeend"' in update

    await database_sync_to_async(services.job_finish)(job_id=job.pk, status="succeeded")
    final = await comm.receive_from(timeout=3)
    assert 'data-status="succeeded"' in final and 'data-percent="100.0"' in final
    closed = await comm.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 1000}


async def test_a_job_that_ends_between_counting_and_reading_still_sends_its_last_line(user, monkeypatch):
    """The consumer counts events, then reads the job row. If the worker finishes in
    between, the row says "succeeded" while the count misses the final state event; the
    page must still get that line before the socket closes."""
    job = await database_sync_to_async(_running_job)(user)
    comm = await _connect(job.pk, user)
    await comm.receive_from(timeout=3)

    real_refresh = Job.refresh_from_db
    finished = []

    def refresh_after_the_worker_finished(self, *args, **kwargs):
        if not finished:
            finished.append(True)
            services.job_finish(job_id=self.pk, status="succeeded")
        return real_refresh(self, *args, **kwargs)

    monkeypatch.setattr(Job, "refresh_from_db", refresh_after_the_worker_finished)
    await database_sync_to_async(services.job_event_record)(
        job_id=job.pk, kind=JobEvent.Kind.LOG, data={"msg": "last step"})
    frames = []
    while True:
        out = await comm.receive_output(timeout=3)
        if out["type"] == "websocket.close":
            break
        frames.append(out["text"])
    history = "".join(f.split('id="job-history"', 1)[1] for f in frames)
    assert "last step" in history and "succeeded" in history


async def test_history_sent_over_the_socket_starts_after_what_the_page_shows(user):
    job = await database_sync_to_async(_running_job)(user)
    last = await database_sync_to_async(
        lambda: services.job_event_record(job_id=job.pk, kind="log", data={"msg": "old line"}).pk
    )()
    comm = await _connect(job.pk, user, f"?after={last}")
    first = await comm.receive_from(timeout=3)
    history = first.split('id="job-history"', 1)[1]
    assert "old line" not in history
    await comm.disconnect()


@pytest.mark.parametrize("who", ["stranger", "anonymous"])
async def test_a_job_you_may_not_see_closes_with_4403(user, other_user, who):
    job = await database_sync_to_async(_running_job)(user)
    viewer = other_user if who == "stranger" else AnonymousUser()
    comm = await _connect(job.pk, viewer)
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}


async def test_staff_may_watch_any_job(user, django_user_model):
    admin = await database_sync_to_async(django_user_model.objects.create_superuser)(
        username="root", password="pw-root-123456")
    job = await database_sync_to_async(_running_job)(user)
    comm = await _connect(job.pk, admin)
    assert 'data-status="running"' in await comm.receive_from(timeout=3)
    await comm.disconnect()


# --- the dashboard's socket ---------------------------------------------------------------------

def _sample(cpu: float, gpus=None):
    from apps.monitoring.models import ResourceSample

    return ResourceSample.objects.create(cpu_percent=cpu, ram_used=3 * 2**30, ram_total=8 * 2**30,
                                         disk_free=50 * 2**30, disk_total=100 * 2**30, gpus=gpus or [])


async def test_the_dashboard_socket_pushes_each_new_sample_and_the_queues(user, monkeypatch):
    monkeypatch.setattr("apps.monitoring.consumers.dashboard_push_seconds", lambda: 0.05)
    await database_sync_to_async(_sample)(12.0)
    comm = WebsocketCommunicator(app, "/ws/dashboard/")
    comm.scope["user"] = user
    assert (await comm.connect())[0]
    first = await comm.receive_from(timeout=3)
    assert first.lstrip().startswith('<div id="machine-live">')  # swapped in by its id
    assert "CPU 12%" in first and "queue heavy: 0 queued, 0 running" in first
    assert 'id="resource-hour"' in first  # the chart comes with it

    def later():
        _sample(87.0)
        services.queue_pause(name="heavy")

    await database_sync_to_async(later)()
    update = await comm.receive_from(timeout=3)
    while "CPU 87%" not in update:  # a push may have been under way before the new sample
        update = await comm.receive_from(timeout=3)
    assert "queue heavy: <strong>paused</strong>" in update
    await comm.disconnect()


async def test_the_dashboard_socket_refuses_anonymous_callers():
    comm = WebsocketCommunicator(app, "/ws/dashboard/")
    comm.scope["user"] = AnonymousUser()
    assert (await comm.connect())[0]
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}


async def test_the_dashboard_page_is_complete_without_the_socket(client, user):
    def page():
        _sample(40.0)
        client.force_login(user)
        return client.get("/").content.decode()

    html = await database_sync_to_async(page)()
    assert 'hx-ext="ws" ws-connect="/ws/dashboard/"' in html
    assert 'id="machine-live"' in html and "CPU 40%" in html and 'id="resource-hour"' in html
