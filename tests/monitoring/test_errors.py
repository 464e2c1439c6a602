"""The error log: exceptions from jobs and views grouped by signature, with counts, first
and last seen, the last traceback and the linked jobs; a page for admins."""

import pytest
from django.urls import reverse

from apps.monitoring import services
from apps.monitoring.models import ErrorGroup

pytestmark = pytest.mark.django_db

FAST = {"steps": 3, "step_seconds": 0}


def test_the_same_failure_is_one_group_counting_its_jobs():
    a = services.job_submit(kind="selftest", spec={**FAST, "fail_at": 2})
    b = services.job_submit(kind="selftest", spec={**FAST, "fail_at": 3})  # another message, same place
    group = ErrorGroup.objects.get()
    assert group.count == 2 and group.exc_type == "RuntimeError"
    assert set(group.jobs.values_list("id", flat=True)) == {a.pk, b.pk}
    assert "at step 3" in group.message and "Traceback" in group.traceback
    assert group.first_seen <= group.last_seen and group.where == "job selftest"
    assert "run_selftest" in group.title


def test_a_different_failure_is_another_group(temp_job_kind):
    from pydantic import BaseModel

    from apps.monitoring.jobkinds import JobKind

    class _Empty(BaseModel):
        pass

    def run(spec, reporter, job):
        raise KeyError("missing")

    temp_job_kind(JobKind(name="t-keyerror", label="t", area="monitoring", spec_model=_Empty, run=run))
    services.job_submit(kind="selftest", spec={**FAST, "fail_at": 2})
    services.job_submit(kind="t-keyerror", spec={})
    assert sorted(ErrorGroup.objects.values_list("exc_type", flat=True)) == ["KeyError", "RuntimeError"]


def test_a_view_error_is_recorded_and_the_page_is_for_admins(client, other_user, django_user_model,
                                                             monkeypatch):
    def boom(*a, **k):
        raise ValueError("the dashboard broke")

    monkeypatch.setattr("apps.monitoring.selectors.workers_status", boom)
    client.raise_request_exception = False
    client.force_login(other_user)  # not an admin
    assert client.get(reverse("monitoring:dashboard")).status_code == 500
    group = ErrorGroup.objects.get()
    assert group.exc_type == "ValueError" and group.where == "view /" and group.count == 1
    assert client.get(reverse("monitoring:error_list")).status_code == 403
    admin = django_user_model.objects.create_user(username="root", password="pw-root-123456", is_staff=True)
    client.force_login(admin)
    page = client.get(reverse("monitoring:error_list")).content.decode()
    assert "ValueError" in page and "the dashboard broke" in page and "\u00d71" in page
