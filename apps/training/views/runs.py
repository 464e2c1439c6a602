"""Pages of fine-tuning runs: the training index, the new-run form with its live memory
estimate, the run page (live while a job runs), compare, resume and "Try it"."""

from __future__ import annotations

import yaml
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.assets.services import AssetInputError
from apps.monitoring.selectors import job_list
from apps.monitoring.services import JobSpecError, JobStateError
from apps.registry.selectors import models_list
from apps.training import run_selectors
from apps.training.engine.spec import FinetuneSpec, FinetuneSpecError, spec_from_yaml, spec_parse
from apps.training.selectors import datasets_list
from apps.training.services.finetune import finetune_resume, finetune_submit
from apps.training.services.try_it import TRY_IT_DEFAULT_TOKENS, try_it_submit
from audobon_site.access import require_change
from audobon_site.forms import VisibilityForm, share_from_post

TASKS = ("causal_lm", "classification")
METHODS = ("lora", "qlora", "full")
# Form field → (spec key path, type). Blank optional fields leave the spec's default.
FIELDS = {
    "base_model": (("base_model",), str), "dataset": (("dataset",), str), "task": (("task",), str),
    "method": (("method",), str), "lora_r": (("lora", "r"), int), "lora_alpha": (("lora", "alpha"), float),
    "lora_dropout": (("lora", "dropout"), float), "learning_rate": (("learning_rate",), float),
    "batch_size": (("batch_size",), "batch"), "max_steps": (("max_steps",), int),
    "eval_steps": (("eval_steps",), int), "save_steps": (("save_steps",), int), "seed": (("seed",), int),
    "max_length": (("max_length",), int), "name": (("name",), str),
}
FLAGS = {"packing": "packing", "group_by_length": "group_by_length", "merge": "merge",
         "gradient_checkpointing": "gradient_checkpointing"}


def _visible_run_or_404(request, run_id: int):
    run = run_selectors.run_visible_get(user=request.user, run_id=run_id)
    if run is None:
        raise Http404(f"no run {run_id} that you may see")
    return run


# --- the index ---------------------------------------------------------------------------------

@login_required
def index(request):
    runs = list(run_selectors.runs_visible(user=request.user)[:100])
    latest = run_selectors.runs_jobs_latest(runs)
    ctx = {"rows": [{"run": r, "job": latest.get(r.pk)} for r in runs],
           "jobs": job_list(user=request.user, area="training")[:10]}
    return render(request, "training/index.html", ctx)


# --- the new-run form --------------------------------------------------------------------------

def spec_from_form(data) -> FinetuneSpec:
    """The spec a posted form describes: its YAML when the advanced box is used, else the
    fields. FinetuneSpecError names the key at fault."""
    if data.get("use_yaml"):
        return spec_from_yaml(data.get("spec_yaml", ""), source="YAML")
    spec: dict = {}
    for field, (path, kind) in FIELDS.items():
        raw = (data.get(field) or "").strip()
        if not raw:
            continue
        key = ".".join(path)
        try:
            if kind == "batch":
                value = raw if raw == "auto" else int(raw)
            elif kind in (int, float):
                value = kind(raw)
            else:
                value = raw
        except ValueError:
            raise FinetuneSpecError(f"{key}: {raw!r} is not a number") from None
        target = spec
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    for field, key in FLAGS.items():
        spec[key] = bool(data.get(field))
    return spec_parse(spec)


def _web_refs(spec: FinetuneSpec) -> FinetuneSpec:
    """From the browser, inputs are library names only: a path would let a page read any
    folder on the server (the command line takes paths)."""
    for key in ("base_model", "dataset"):
        ref = getattr(spec, key)
        if any(c in ref for c in "/\\~") or ref.startswith("."):
            raise FinetuneSpecError(f"{key}: {ref!r} is not a library name; pick one from the list")
    return spec


def _as_form(values: dict) -> dict:
    """Values in the shape of posted data (ticked boxes as "1", unticked left out)."""
    out = {k: str(v) for k, v in values.items() if not isinstance(v, bool) and v is not None}
    out.update({k: "1" for k in FLAGS if values.get(k) is True})
    return out


def _yaml_for(values: dict) -> str:
    try:
        data = spec_from_form(_as_form(values)).model_dump(mode="json", exclude_none=True)
    except FinetuneSpecError:
        data = {"base_model": values.get("base_model", ""), "dataset": values.get("dataset", "")}
    return yaml.safe_dump(data, sort_keys=False)


def _estimate_context(data) -> dict:
    try:
        spec = _web_refs(spec_from_form(data))
        return {"estimate": run_selectors.run_estimate(spec)}
    except FinetuneSpecError as exc:
        return {"problems": [p.strip() for p in str(exc).split("; ")]}


def _form_context(request, posted=None) -> dict:
    """The form's lists and values: the defaults for the picked base's size, under what was
    posted (or, on a GET, under the few fields the URL names)."""
    models = list(models_list().filter(error="").exclude(asset=None))
    datasets = list(datasets_list())
    source = posted if posted is not None else request.GET
    picked = source.get("base_model") or (models[0].asset.name if models else "")
    picked_model = next((m for m in models if m.asset.name == picked), None)
    values = run_selectors.form_defaults(
        picked_model.parameters if picked_model else 0,
        max_positions=run_selectors.model_max_positions(picked_model) if picked_model else None)
    values.update(base_model=picked, dataset=source.get("dataset") or (datasets[0].name if datasets else ""),
                  name="")
    for field in FIELDS:
        if field in source:
            values[field] = source.get(field)
    if posted is not None:
        values.update({field: bool(posted.get(field)) for field in FLAGS})
    use_yaml = bool(posted is not None and posted.get("use_yaml"))
    return {"models": models, "datasets": datasets, "values": values, "tasks": TASKS, "methods": METHODS,
            "picked_model": picked_model, "use_yaml": use_yaml,
            "spec_yaml": posted.get("spec_yaml", "") if use_yaml else _yaml_for(values),
            **_estimate_context(posted if posted is not None else _as_form(values))}


@login_required
def run_new(request):
    if request.method == "POST":
        try:
            spec = _web_refs(spec_from_form(request.POST))
            run, _ = finetune_submit(spec=spec, owner=request.user)
        except (FinetuneSpecError, JobSpecError, AssetInputError) as exc:
            messages.error(request, f"Nothing was started: {exc}")
            return render(request, "training/run_new.html", _form_context(request, request.POST), status=400)
        messages.success(request, f"Run {run.pk} started.")
        return redirect("training:run_detail", run_id=run.pk)
    ctx = _form_context(request)
    # Picking another base re-renders the fields with that model's defaults.
    template = "training/run_new.html#run_fields_update" if request.htmx else "training/run_new.html"
    return render(request, template, ctx)


@login_required
@require_POST
def run_estimate(request):
    """The estimate panel as the form changes; without JavaScript, the whole form again."""
    if request.htmx:
        return render(request, "training/_run_estimate.html", _estimate_context(request.POST))
    return render(request, "training/run_new.html", _form_context(request, request.POST))


# --- one run -----------------------------------------------------------------------------------

def _run_context(request, run) -> dict:
    tries = run_selectors.run_try_jobs(run)
    return {**run_selectors.run_live_context(run), "spec_rows": run_selectors.spec_rows(run.spec),
            "tries": tries, "tries_active": any(not t.is_finished for t in tries),
            "try_tokens": TRY_IT_DEFAULT_TOKENS}


@login_required
def run_detail(request, run_id: int):
    run = _visible_run_or_404(request, run_id)
    ctx = {**_run_context(request, run), "share_form": VisibilityForm.for_object(run, request.user)}
    part = request.GET.get("part")
    if request.htmx and part == "tries":
        return render(request, "training/run_detail.html#tries", ctx)
    if request.htmx:
        return render(request, "training/run_detail.html#live", ctx)
    return render(request, "training/run_detail.html", ctx)


@login_required
@require_POST
def run_share(request, run_id: int):
    run = _visible_run_or_404(request, run_id)
    require_change(request.user, run, f"run {run.pk}")
    share_from_post(request, run, f"Run {run.pk}")
    return redirect("training:run_detail", run_id=run.pk)


@login_required
@require_POST
def run_resume(request, run_id: int):
    run = _visible_run_or_404(request, run_id)
    require_change(request.user, run, f"run {run.pk}")
    job = run_selectors.run_resumable_job(run)
    if job is None:
        messages.error(request, f"Run {run.pk} cannot be resumed: its last job did not stop early "
                                "or no checkpoint was kept.")
        return redirect("training:run_detail", run_id=run.pk)
    try:
        _, new = finetune_resume(job=job, owner=request.user)
        messages.success(request, f"Run {run.pk} resumed as job {new.pk}.")
    except (JobStateError, JobSpecError, FinetuneSpecError) as exc:
        messages.error(request, str(exc))
    return redirect("training:run_detail", run_id=run.pk)


@login_required
@require_POST
def run_try(request, run_id: int):
    run = _visible_run_or_404(request, run_id)
    prompt = request.POST.get("prompt", "").strip()
    try:
        tokens = int(request.POST.get("max_new_tokens") or TRY_IT_DEFAULT_TOKENS)
        try_it_submit(run=run, prompt=prompt, owner=request.user, max_new_tokens=tokens)
    except ValueError as exc:  # a bad number, an empty prompt, a run with nothing to try
        messages.error(request, f"Not tried: {exc}")
    return redirect(reverse("training:run_detail", kwargs={"run_id": run.pk}) + "#try-it")


# --- compare -----------------------------------------------------------------------------------

@login_required
def compare(request):
    ids = []
    for raw in request.GET.getlist("run"):
        if raw.isdigit() and int(raw) not in ids:
            ids.append(int(raw))
    runs = [_visible_run_or_404(request, pk) for pk in ids]
    ctx = {"picked": runs, "choices": run_selectors.runs_visible(user=request.user)[:100]}
    if len(runs) >= 2:
        ctx.update(run_selectors.runs_compare(runs), compared=True)
    return render(request, "training/compare.html", ctx)
