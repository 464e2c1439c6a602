"""`audobon jobs …` from the shell."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.monitoring.models import Job

pytestmark = pytest.mark.django_db


def jobs(*args):
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_submit_prints_the_id_and_json_has_the_promised_fields():
    job_id = int(jobs("submit", "selftest", "--spec", '{"steps": 2, "step_seconds": 0}'))
    assert Job.objects.get(pk=job_id).status == "succeeded"
    data = json.loads(jobs("submit", "selftest", "--spec", '{"steps": 2, "step_seconds": 0}',
                           "--priority", "7", "--json"))
    assert {"id", "kind", "status", "progress"} <= set(data)
    assert (data["kind"], data["status"], data["progress"], data["priority"]) == (
        "selftest", "succeeded", 1.0, 7)


@pytest.mark.parametrize(("args", "message"), [
    (["submit", "selftest", "--spec", "{steps: 2"], "--spec is not valid JSON"),
    (["submit", "nope"], "unknown job kind 'nope'"),
    (["submit", "selftest", "--spec", '{"steps": "many"}'], "spec.steps: Input should be a valid integer"),
])
def test_bad_submissions_say_why_and_queue_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        jobs(*args)
    assert Job.objects.count() == 0


def test_list_show_cancel_retry_watch():
    first = int(jobs("submit", "selftest", "--spec", '{"steps": 1, "step_seconds": 0}'))
    listed = json.loads(jobs("list", "--json"))
    assert [j["id"] for j in listed] == [first]
    assert json.loads(jobs("show", str(first), "--json"))["status"] == "succeeded"
    with pytest.raises(CommandError, match=f"job {first} already succeeded"):
        jobs("cancel", str(first))
    again = int(jobs("retry", str(first)))
    assert Job.objects.get(pk=again).retry_of_id == first
    assert jobs("watch", str(again)) == f"job {again}: succeeded"
    with pytest.raises(CommandError, match="no job with id 999"):
        jobs("show", "999")


def test_watch_fails_for_a_failed_job():
    job_id = int(jobs("submit", "selftest", "--spec", '{"steps": 2, "step_seconds": 0, "fail_at": 2}'))
    with pytest.raises(CommandError, match=f"job {job_id} ended failed"):
        jobs("watch", str(job_id))


def test_cancel_a_queued_job():
    job = Job.objects.create(kind="selftest", spec={}, queue="light")
    assert jobs("cancel", str(job.pk)) == f"job {job.pk}: cancelled"


def test_priority_of_a_queued_job_changes_once_and_it_runs_once():
    from apps.monitoring.models import JobEvent
    from apps.monitoring.tasks import execute_job

    job = Job.objects.create(kind="selftest", spec={"steps": 1, "step_seconds": 0}, queue="light")
    assert jobs("priority", str(job.pk), "7") == f"job {job.pk}: priority 7"
    job.refresh_from_db()
    assert job.priority == 7
    assert job.events.filter(kind=JobEvent.Kind.LOG, data__msg="priority set to 7").exists()
    # Tests run the queue inline, so the new entry already ran it; the old entry, reached
    # later by a worker, finds it taken and runs nothing.
    execute_job(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.events.filter(kind=JobEvent.Kind.STATE, data__status="running").count() == 1
    with pytest.raises(CommandError, match="only a queued job's priority can change"):
        jobs("priority", str(job.pk), "1")
    with pytest.raises(CommandError, match=r"outside -1000\.\.1000"):
        jobs("priority", str(Job.objects.create(kind="selftest", spec={}, queue="light").pk), "5000")
