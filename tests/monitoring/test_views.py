"""Pages: dashboard, jobs, job page without JavaScript, login link, health."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.monitoring import services
from apps.monitoring.models import Job, WorkerHeartbeat
from audobon_site.login_links import login_link_path

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada_client(client, user):
    client.force_login(user)
    return client


def test_pages_need_a_login(client):
    for name in ("monitoring:dashboard", "monitoring:job_list", "assets:library"):
        resp = client.get(reverse(name))
        assert resp.status_code == 302 and resp["Location"].startswith("/login/")


def test_selftest_from_the_dashboard_lands_on_its_job_page(ada_client, user):
    resp = ada_client.post(reverse("monitoring:selftest_submit"),
                           {"steps": 3, "step_seconds": 0, "queue": "light"})
    job = Job.objects.get()
    assert resp.status_code == 302 and resp["Location"] == f"/jobs/{job.pk}/"
    assert job.owner == user and job.status == "succeeded"
    page = ada_client.get(resp["Location"]).content.decode()
    # Rendered complete on the server: state, bar, history, chart.
    assert 'data-status="succeeded"' in page and 'data-percent="100.0"' in page
    assert "selftest: 3 steps of 0.0s" in page
    assert "<svg" in page and "loss" in page
    assert "ws-connect" not in page  # nothing left to stream for a finished job


def test_bad_selftest_form_input_is_reported_and_queues_nothing(ada_client):
    resp = ada_client.post(reverse("monitoring:selftest_submit"), {"steps": 0, "step_seconds": 0},
                           follow=True)
    assert "Self-test not started" in resp.content.decode()
    assert Job.objects.count() == 0


def test_running_job_page_connects_its_websocket_after_the_last_event(ada_client, user):
    job = Job.objects.create(kind="selftest", spec={}, queue="light", owner=user)
    services.job_start(job_id=job.pk, worker_id="t:1:light")
    last = job.events.order_by("-id").first().pk
    page = ada_client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert f'ws-connect="/ws/jobs/{job.pk}/?after={last}"' in page
    assert 'id="cancel-job"' in page


def test_htmx_request_gets_only_the_live_partial(ada_client, user):
    job = services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0}, owner=user)
    resp = ada_client.get(reverse("monitoring:job_detail", args=[job.pk]), HTTP_HX_REQUEST="true")
    body = resp.content.decode()
    assert body.lstrip().startswith('<section id="job-live"') and "<html" not in body


def test_someone_elses_job_is_not_found(client, user, third_user, other_user):
    job = services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0}, owner=third_user)
    client.force_login(other_user)
    assert client.get(reverse("monitoring:job_detail", args=[job.pk])).status_code == 404
    assert client.post(reverse("monitoring:job_cancel", args=[job.pk])).status_code == 404
    assert f"#{job.pk}<" not in client.get(reverse("monitoring:job_list")).content.decode()


def test_cancel_and_retry_buttons(ada_client, user):
    queued = Job.objects.create(kind="selftest", spec={"steps": 1, "step_seconds": 0},
                                queue="light", owner=user)
    resp = ada_client.post(reverse("monitoring:job_cancel", args=[queued.pk]), follow=True)
    assert f"Job {queued.pk}: cancel requested." in resp.content.decode()
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    # Cancelling it again says why nothing happened.
    resp = ada_client.post(reverse("monitoring:job_cancel", args=[queued.pk]), follow=True)
    assert "already cancelled; there is nothing to cancel" in resp.content.decode()
    resp = ada_client.post(reverse("monitoring:job_retry", args=[queued.pk]))
    retry = Job.objects.exclude(pk=queued.pk).get()
    assert resp["Location"] == f"/jobs/{retry.pk}/" and retry.retry_of == queued


def test_job_list_filters_by_status(ada_client, user):
    ok = services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0}, owner=user)
    bad = services.job_submit(kind="selftest", spec={"steps": 2, "step_seconds": 0, "fail_at": 1},
                              owner=user)
    body = ada_client.get(reverse("monitoring:job_list"), {"status": "failed"}).content.decode()
    assert f'href="/jobs/{bad.pk}/"' in body and f'href="/jobs/{ok.pk}/"' not in body


def test_login_link_works_once(client, user):
    path = login_link_path(user)
    resp = client.get(path)
    assert resp.status_code == 302 and resp["Location"] == reverse("monitoring:dashboard")
    assert client.get(reverse("monitoring:dashboard")).status_code == 200
    client.logout()
    spent = client.get(path)
    assert spent.status_code == 403 and b"spent or expired" in spent.content


def test_login_link_rejects_a_forged_token(client, user):
    good = login_link_path(user)
    forged = re.sub(r"-[0-9a-f]+/$", "-0123456789abcdef0123/", good)
    assert client.get(forged).status_code == 403


def _beat_both_queues():
    now = timezone.now()
    for q in ("heavy", "light"):
        WorkerHeartbeat.objects.create(worker_id=f"gpu-box-7:4242:{q}", queue=q, host="gpu-box-7",
                                       pid=4242, started_at=now, last_seen=now)


def test_healthz_reports_each_part_to_a_logged_in_user(ada_client):
    resp = ada_client.get("/healthz")
    data = resp.json()
    assert resp.status_code == 503 and data["status"] == "degraded"
    assert data["database"]["ok"] and data["queue"]["ok"] and data["disk"]["free_bytes"] > 0
    assert data["workers"]["missing_queues"] == ["heavy", "light"]
    _beat_both_queues()
    resp = ada_client.get("/healthz")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    assert {w["pid"] for w in resp.json()["workers"]["workers"]} == {4242}


def test_healthz_tells_an_anonymous_caller_only_ok_or_degraded(client, settings):
    resp = client.get("/healthz")
    assert resp.status_code == 503 and resp.json() == {"status": "degraded", "ok": False}
    _beat_both_queues()
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok", "ok": True}
    # No host name, worker pid or home path for a stranger.
    body = resp.content.decode()
    assert "gpu-box-7" not in body and "4242" not in body and str(settings.AUDOBON_HOME) not in body
    assert resp["Cache-Control"].startswith("max-age=0")


def test_area_pages_list_their_jobs(ada_client):
    body = ada_client.get(reverse("monitoring:job_list")).content.decode()
    assert 'href="/library/"' in body and 'href="/training/"' in body
    page = ada_client.get(reverse("training:index")).content.decode()
    assert "Training" in page and "fine-tuning" in page
