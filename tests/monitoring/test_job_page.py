"""The job page shows what the job made, what it used, and its spec and result as tables."""

import pytest
from django.urls import reverse

from apps.assets import services as asset_services
from apps.monitoring import services
from apps.monitoring.models import Job

pytestmark = pytest.mark.django_db


def test_the_job_page_links_what_the_job_made_with_its_summary(client, user, fresh_library, tmp_path):
    client.force_login(user)
    job = services.job_submit(kind="selftest", spec={"steps": 2, "step_seconds": 0}, owner=user)
    folder = tmp_path / "made"
    folder.mkdir()
    (folder / "data.jsonl").write_text('{"text": "hello"}\n')
    version = asset_services.asset_import(
        source=folder, kind="dataset", name="made-by-job", job=job, owner=user,
        metadata={"validation": {"losses": {"result": 2.5, "a": 2.75}, "ok": True, "skipped": {}}})
    other = asset_services.asset_import(source=folder, kind="dataset", name="not-by-job", owner=user)

    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert 'id="job-outputs"' in page and str(version) in page and str(other) not in page
    assert "loss.result" in page and "2.5" in page and "gates passed" in page
    job.refresh_from_db()
    assert 'id="job-usage"' in page and "peak memory" in page and job.peak_rss
    # the spec as a table of keys, not a Python repr
    assert "<th>steps</th><td>2</td>" in page and "{&#x27;steps&#x27;" not in page


def test_a_queued_job_shows_no_usage_and_nothing_made(client, user):
    client.force_login(user)
    job = Job.objects.create(kind="selftest", spec={"steps": 1}, queue="light", owner=user)
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert 'id="job-usage"' not in page and 'id="job-outputs"' not in page
    assert "<th>steps</th><td>1</td>" in page


def test_a_queued_job_priority_changes_from_its_page(client, user, other_user):
    client.force_login(user)
    job = Job.objects.create(kind="selftest", spec={"steps": 1, "step_seconds": 0}, queue="light", owner=user)
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert 'id="priority-form"' in page
    resp = client.post(reverse("monitoring:job_priority", args=[job.pk]), {"priority": "9"})
    assert resp.status_code == 302
    job.refresh_from_db()
    assert job.priority == 9
    bad = client.post(reverse("monitoring:job_priority", args=[job.pk]), {"priority": "x"}, follow=True)
    assert "whole number" in bad.content.decode() or "only a queued job" in bad.content.decode()
    client.force_login(other_user)
    url = reverse("monitoring:job_priority", args=[job.pk])
    assert client.post(url, {"priority": "1"}).status_code == 404  # another user's job
