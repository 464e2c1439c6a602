"""`audobon jobs submit|list|show|cancel|retry|watch`: the job spine from the shell."""

from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand, CommandError

from apps.assets.engine.safeparse import MAX_DEPTH, ParseError, json_loads
from apps.monitoring import selectors, services
from apps.monitoring.engine.terminal import TerminalProgress
from apps.monitoring.models import Job, JobEvent
from audobon_site.access import acting_as, owner_from_options

WATCH_POLL_S = 0.2
# Room for the largest recipe (64 KB) with JSON's escapes; each kind's spec checks the rest.
SPEC_MAX_BYTES = 256 * 1024


class Command(BaseCommand):
    help = "Submit, list, show, cancel, retry and watch jobs, and change a queued job's priority."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        p = sub.add_parser("submit", help="queue a job and print its id")
        p.add_argument("kind")
        p.add_argument("--spec", default="{}", help="the job's spec as a JSON object")
        p.add_argument("--priority", type=int, default=0, help="higher runs first")
        p.add_argument("--owner", help="username that owns the job (default: the only admin)")
        p.add_argument("--json", action="store_true", dest="as_json")
        p = sub.add_parser("list", help="recent jobs")
        p.add_argument("--status", choices=[s for s, _ in Job.Status.choices])
        p.add_argument("--kind")
        p.add_argument("--limit", type=int, default=20)
        p.add_argument("--json", action="store_true", dest="as_json")
        for name, text in (("show", "one job"), ("cancel", "cancel a job"),
                           ("retry", "run a finished job again"),
                           ("watch", "a progress bar until the job ends")):
            p = sub.add_parser(name, help=text)
            p.add_argument("id", type=int, metavar="ID")
            p.add_argument("--json", action="store_true", dest="as_json")
        p = sub.add_parser("priority", help="change a queued job's priority (higher runs first)")
        p.add_argument("id", type=int, metavar="ID")
        p.add_argument("priority", type=int, metavar="N")
        p.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, action, **opts):
        return getattr(self, f"do_{action}")(**opts)

    # --- actions -------------------------------------------------------------------------

    def do_submit(self, *, kind, spec, priority, owner, as_json: bool, **_):
        try:
            # Capped before parsing: deep JSON would otherwise end in a RecursionError.
            spec_obj = json_loads(spec, source="--spec", max_bytes=SPEC_MAX_BYTES, max_depth=MAX_DEPTH)
        except ParseError as exc:
            where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
            raise CommandError(f"--spec is not valid JSON: {exc.reason}{where}") from None
        user = owner_from_options({"owner": owner})
        try:
            with acting_as(user):  # names in the spec resolve as the owner sees the library
                job = services.job_submit(kind=kind, spec=spec_obj, owner=user, priority=priority)
        except services.JobSpecError as exc:
            raise CommandError(f"{exc} (nothing was queued)") from None
        if as_json:
            self._print_json(selectors.job_as_dict(job))
        else:
            self.stdout.write(str(job.pk))

    def do_list(self, *, status, kind, limit, as_json: bool, **_):
        jobs = Job.objects.select_related("owner")
        if status:
            jobs = jobs.filter(status=status)
        if kind:
            jobs = jobs.filter(kind=kind)
        jobs = list(jobs[:limit])
        if as_json:
            self._print_json([selectors.job_as_dict(j) for j in jobs])
            return
        for j in jobs:
            self.stdout.write(f"{j.pk:>6}  {j.kind:<16} {j.status:<11} {j.progress * 100:5.1f}%  "
                              f"{j.created_at:%Y-%m-%d %H:%M:%S}")
        if not jobs:
            self.stdout.write("no jobs")

    def do_show(self, *, id: int, as_json: bool, **_):
        job = _job(id)
        if as_json:
            self._print_json(selectors.job_as_dict(job))
            return
        for key, value in selectors.job_as_dict(job).items():
            self.stdout.write(f"{key:>12}: {value}")
        if job.traceback:
            self.stdout.write(job.traceback)

    def do_cancel(self, *, id: int, as_json: bool, **_):
        try:
            job = services.job_cancel(job=_job(id))
        except services.JobStateError as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            self._print_json(selectors.job_as_dict(job))
        else:
            self.stdout.write(f"job {job.pk}: {job.status}"
                              + (" (cancel requested)" if job.status == "running" else ""))

    def do_priority(self, *, id: int, priority: int, as_json: bool, **_):
        try:
            job = services.job_priority_set(job=_job(id), priority=priority)
        except services.JobStateError as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            self._print_json(selectors.job_as_dict(job))
        else:
            self.stdout.write(f"job {job.pk}: priority {job.priority}")

    def do_retry(self, *, id: int, as_json: bool, **_):
        try:
            job = services.job_retry(job=_job(id))
        except services.JobStateError as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            self._print_json(selectors.job_as_dict(job))
        else:
            self.stdout.write(str(job.pk))

    def do_watch(self, *, id: int, as_json: bool, **_):
        job = _job(id)
        bar = TerminalProgress(label=f"job {job.pk} {job.kind}", stream=self.stderr._out)
        last_event = 0
        warned = False
        while True:
            job.refresh_from_db()
            for ev in JobEvent.objects.filter(job=job, id__gt=last_event,
                                              kind__in=[JobEvent.Kind.LOG, JobEvent.Kind.STATE]):
                last_event = ev.pk
                bar.log(_event_line(ev))
            if job.is_finished:
                break
            if job.status == Job.Status.QUEUED and not warned and not any(
                w["alive"] for w in selectors.workers_status()
            ):
                warned = True
                bar.log("no worker is running: start one with `audobon up`")
            bar.show(bar.render(job.steps_done, job.steps_total,
                                eta=selectors.job_eta_seconds(job)))
            time.sleep(WATCH_POLL_S)
        bar.show(bar.render(job.steps_done, job.steps_total or None), final=True)
        if as_json:
            self._print_json(selectors.job_as_dict(job))
        else:
            self.stdout.write(f"job {job.pk}: {job.status}" + (f" — {job.error}" if job.error else ""))
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"job {job.pk} ended {job.status}", returncode=1)

    def _print_json(self, obj):
        self.stdout.write(json.dumps(obj, indent=None, default=str))


def _job(job_id: int) -> Job:
    job = Job.objects.select_related("owner").filter(pk=job_id).first()
    if job is None:
        raise CommandError(f"no job with id {job_id}")
    return job


def _event_line(ev: JobEvent) -> str:
    if ev.kind == JobEvent.Kind.STATE:
        error = ev.data.get("error")
        return f"status: {ev.data.get('status')}" + (f" ({error})" if error else "")
    return ev.data.get("msg", "")
