"""Every page warns when a worker stopped reporting or disk runs low."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.monitoring.models import WorkerHeartbeat

pytestmark = pytest.mark.django_db


def test_a_dead_worker_and_low_disk_show_a_banner_on_every_page(client, user, monkeypatch):
    client.force_login(user)
    page = client.get(reverse("assets:library")).content.decode()
    assert 'class="banner' not in page  # nothing to warn about
    now = timezone.now()
    WorkerHeartbeat.objects.create(worker_id="box:42:heavy", queue="heavy", host="box", pid=42,
                                   started_at=now - timedelta(minutes=5),
                                   last_seen=now - timedelta(minutes=2))
    monkeypatch.setattr("apps.monitoring.context_processors.LOW_DISK_BYTES", 2**62)
    for name in ("assets:library", "monitoring:dashboard", "monitoring:job_list"):
        page = client.get(reverse(name)).content.decode()
        assert "The heavy worker box:42:heavy stopped reporting" in page
        assert "Disk space is low" in page


def test_no_banner_for_anonymous_callers(client):
    page = client.get("/login/").content.decode()
    assert 'class="banner' not in page
