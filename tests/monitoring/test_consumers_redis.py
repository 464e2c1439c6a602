"""LAN mode: with Redis, a recorded event is pushed through channels_redis to the socket."""


import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from apps.monitoring import consumers, services
from apps.monitoring.models import Job
from apps.monitoring.routing import websocket_urlpatterns
from tests.proc import REDIS_URL

pytestmark = [pytest.mark.lan, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def redis_layer(settings, monkeypatch):
    settings.REDIS_URL = REDIS_URL
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [REDIS_URL]}}}
    # No safety poll during the test: whatever arrives was pushed.
    monkeypatch.setattr(consumers, "REDIS_SAFETY_POLL_S", 3600)


async def test_events_are_pushed_not_polled(redis_layer, user):
    def running_job():
        job = Job.objects.create(kind="selftest", spec={}, queue="light", owner=user)
        services.job_start(job_id=job.pk, worker_id="t:1:light")
        return job

    job = await database_sync_to_async(running_job)()
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/jobs/{job.pk}/")
    comm.scope["user"] = user
    assert (await comm.connect())[0]
    assert 'data-status="running"' in await comm.receive_from(timeout=3)
    await database_sync_to_async(services.job_event_record)(
        job_id=job.pk, kind="log", data={"msg": "pushed through redis"})
    assert "pushed through redis" in await comm.receive_from(timeout=5)
    await comm.disconnect()
