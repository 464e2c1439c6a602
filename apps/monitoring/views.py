from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from apps.monitoring import selectors, services
from apps.monitoring.forms import JobFilterForm, SelftestForm
from audobon_site.access import require_change
from audobon_site.forms import VisibilityForm, share_from_post

JOBS_PER_PAGE = 25


@login_required
def dashboard(request):
    ctx = {
        "jobs": selectors.jobs_visible(user=request.user)[:10],
        "selftest_form": SelftestForm(),
        "workers": selectors.workers_status(),
        **selectors.dashboard_live_context(),
    }
    template = "monitoring/dashboard.html#recent_jobs" if request.htmx else "monitoring/dashboard.html"
    return render(request, template, ctx)


@login_required
def job_list(request):
    form = JobFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    jobs = selectors.job_list(user=request.user, status=filters.get("status", ""),
                              kind=filters.get("kind", ""))
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    ctx = {"form": form, "page": page, "query": query.urlencode(), "queues": selectors.queues_summary()}
    template = "monitoring/job_list.html#job_table" if request.htmx else "monitoring/job_list.html"
    return render(request, template, ctx)


def _visible_job_or_404(request, job_id):
    job = selectors.job_visible_get(user=request.user, job_id=job_id)
    if job is None:
        raise Http404(f"no job {job_id} that you may see")
    return job


@login_required
def job_detail(request, job_id: int):
    job = _visible_job_or_404(request, job_id)
    live = selectors.job_live_context(job=job, after=-1)
    ctx = {**live, "history": selectors.job_history(job=job, up_to=live["last_event_id"])}
    if not request.htmx:
        ctx.update(share_form=VisibilityForm.for_object(job, request.user),
                   outputs=selectors.job_outputs(job=job), usage=selectors.job_usage(job),
                   spec_rows=selectors.table_rows(job.spec), result_rows=selectors.table_rows(job.result))
    template = "monitoring/job_detail.html#live" if request.htmx else "monitoring/job_detail.html"
    return render(request, template, ctx)


@login_required
@require_POST
def job_share(request, job_id: int):
    job = _visible_job_or_404(request, job_id)
    require_change(request.user, job, f"job {job.pk}")
    share_from_post(request, job, f"Job {job.pk}")
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
@require_POST
def job_cancel(request, job_id: int):
    job = _visible_job_or_404(request, job_id)
    require_change(request.user, job, f"job {job.pk}")
    try:
        services.job_cancel(job=job)
        messages.success(request, f"Job {job.pk}: cancel requested.")
    except services.JobStateError as exc:
        messages.error(request, str(exc))
    nxt = request.POST.get("next", "")
    if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
        return redirect(nxt)
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
@require_POST
def job_retry(request, job_id: int):
    job = _visible_job_or_404(request, job_id)
    require_change(request.user, job, f"job {job.pk}")
    try:
        new = services.job_retry(job=job, owner=request.user)
    except services.JobStateError as exc:
        messages.error(request, str(exc))
        return redirect("monitoring:job_detail", job_id=job.pk)
    messages.success(request, f"Job {new.pk} queued as a retry of job {job.pk}.")
    return redirect("monitoring:job_detail", job_id=new.pk)


@login_required
@require_POST
def selftest_submit(request):
    form = SelftestForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Self-test not started: {form.errors.as_text()}")
        return redirect("monitoring:dashboard")
    job = services.job_submit(kind="selftest", spec=form.cleaned_data, owner=request.user)
    return redirect("monitoring:job_detail", job_id=job.pk)


@never_cache
def healthz(request):
    """Ok or degraded for anyone (load balancers, `audobon up`); the parts, with worker
    hosts and pids and the home's path, only for a logged-in user."""
    report = selectors.health_report()
    status = 200 if report["ok"] else 503
    if not request.user.is_authenticated:
        # "ok" repeats the status as a boolean for probes that read it (benchmarks/cold_start.py).
        return JsonResponse({"status": report["status"], "ok": report["ok"]}, status=status)
    return JsonResponse(report, status=status)


@login_required
def area_jobs(request, area: str, title: str, about: str):
    """An app's landing page: what it is for and the jobs of its kinds."""
    ctx = {
        "area": area, "title": title, "about": about,
        "kinds": selectors.job_kinds_for_area(area=area),
        "jobs": selectors.job_list(user=request.user, area=area)[:JOBS_PER_PAGE],
    }
    return render(request, "monitoring/area.html", ctx)


@login_required
def error_list(request):
    """The error log, grouped by signature. Admins only: messages and tracebacks can carry
    any user's names and paths."""
    if not request.user.is_staff:
        return HttpResponseForbidden("the error log is for administrators")
    groups = selectors.error_groups()
    return render(request, "monitoring/errors.html", {"groups": groups})


@login_required
@require_POST
def job_priority(request, job_id: int):
    job = _visible_job_or_404(request, job_id)
    require_change(request.user, job, f"job {job.pk}")
    try:
        services.job_priority_set(job=job, priority=int(request.POST.get("priority", "")))
        messages.success(request, f"Job {job.pk}: priority {job.priority}.")
    except ValueError as exc:  # JobStateError, or not a number
        messages.error(request, str(exc) if isinstance(exc, services.JobStateError)
                       else "The priority is a whole number from -1000 to 1000.")
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
@require_POST
def queue_pause(request, name: str):
    return _queue_change(request, name, pause=True)


@login_required
@require_POST
def queue_resume(request, name: str):
    return _queue_change(request, name, pause=False)


def _queue_change(request, name: str, *, pause: bool):
    """Pausing a queue holds every user's jobs: administrators only."""
    if not request.user.is_staff:
        return HttpResponseForbidden("pausing and resuming a queue is for administrators")
    try:
        (services.queue_pause if pause else services.queue_resume)(name=name, user=request.user)
    except services.UnknownQueue as exc:
        raise Http404(str(exc)) from None
    what = "paused: running jobs finish, no new one starts" if pause else "resumed"
    messages.success(request, f"Queue {name} {what}.")
    return redirect("monitoring:job_list")
