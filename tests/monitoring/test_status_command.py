"""`audobon status`: health, queues, workers and resources, as text and as JSON."""

import json

import pytest
from django.core.management import call_command

from apps.monitoring import services
from apps.monitoring.engine.resources import read_resources
from apps.monitoring.models import Job

pytestmark = pytest.mark.django_db


def test_status_json_has_health_queues_workers_and_resources(capsys, settings):
    Job.objects.create(kind="selftest", spec={}, queue="heavy")
    Job.objects.create(kind="selftest", spec={}, queue="heavy")
    running = Job.objects.create(kind="selftest", spec={}, queue="light")
    services.job_start(job_id=running.pk, worker_id="w:1:light")
    services.resource_sample_record(reading=read_resources(settings.AUDOBON_HOME))
    call_command("status", "--json")
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"health", "queues", "workers", "resources"}
    assert report["queues"]["heavy"] == {"queued": 2, "running": 0, "paused": False}
    assert report["queues"]["light"] == {"queued": 0, "running": 1, "paused": False}
    services.queue_pause(name="heavy")
    call_command("status", "--json")
    assert json.loads(capsys.readouterr().out)["queues"]["heavy"]["paused"] is True
    call_command("status")
    assert "queue heavy: 2 queued, 0 running (PAUSED" in capsys.readouterr().out
    assert report["health"]["database"] is True and report["health"]["status"] in ("ok", "degraded")
    assert report["resources"]["ram_total"] > 0


def test_status_text_says_what_is_missing(capsys):
    call_command("status")
    out = capsys.readouterr().out
    assert out.startswith("health: ") and "nothing queued or running" in out
    assert "workers: none running" in out and "no sample yet" in out
