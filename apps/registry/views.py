import json
import os

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.engine.errors import StoreError
from apps.assets.roots import PathNotAllowedError, web_path_check, web_roots
from apps.monitoring.services import JobSpecError, job_submit
from apps.registry import selectors
from apps.registry.forms import ScanForm
from audobon_site.access import acting_user, admin_required, require_change


@login_required
def model_list(request):
    ctx = {"models": selectors.models_list(query=request.GET.get("q", "")),
           "roots": selectors.scan_roots(), "scan_form": ScanForm(), "q": request.GET.get("q", ""),
           "web_roots": web_roots()}
    return render(request, "registry/model_list.html", ctx)


@admin_required
@require_POST
def scan(request):
    """Scan one folder the web may read (under AUDOBON_HOME or an import root), or, with no
    folder given, every known root again."""
    form = ScanForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(e for errs in form.errors.values() for e in errs))
        return redirect("registry:index")
    path = form.cleaned_data["path"]
    job = job_submit(kind="scan_models", spec={"paths": [path] if path else []}, owner=request.user)
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
@require_POST
def demo(request):
    job = job_submit(kind="demo_models", spec={}, owner=request.user)
    return redirect("monitoring:job_detail", job_id=job.pk)


def _model_or_404(model_id):
    model = selectors.model_get(model_id=model_id)
    if model is None:
        raise Http404(f"no model {model_id}")
    return model


@login_required
def model_detail(request, model_id: int):
    model = _model_or_404(model_id)
    others = selectors.models_list().exclude(pk=model.pk).filter(error="")
    ctx = {"model": model, "report": model.report, "others": others,
           "diffs": _diffs_of(model)}
    return render(request, "registry/model_detail.html", ctx)


def _diffs_of(model):
    if model.asset is None:
        return []
    return list(asset_selectors.assets_visible(user=acting_user()).filter(
        trashed_at__isnull=True, kind="report", versions__parents__asset=model.asset).distinct()[:10])


@login_required
@require_POST
def import_model(request, model_id: int):
    model = _model_or_404(model_id)
    if model.asset is not None:
        require_change(request.user, model.asset, f"model {model.name!r}")
    spec = {"model_id": model.pk, "link": request.POST.get("link") == "1"}
    job = job_submit(kind="model_import", spec=spec, owner=request.user)
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
def compare(request):
    """The matrix for two or more models picked on the list."""
    ids = [int(i) for i in request.GET.getlist("ids") if i.isdigit()]
    models = [m for m in (selectors.model_get(model_id=i) for i in ids) if m is not None]
    ctx = {"models": models}
    if len(models) < 2:
        ctx["error"] = "Pick two or more models to compare."
    else:
        try:
            ctx["pairs"] = selectors.compatibility(models=models)["pairs"]
        except (OSError, ValueError) as exc:
            ctx["error"] = str(exc)
    return render(request, "registry/compare.html", ctx)


@login_required
def compat(request, model_id: int):
    model = _model_or_404(model_id)
    raw = request.GET.get("other") or ""  # a model id; anything else (text, NUL, 30 digits) is none
    ok = raw.isascii() and raw.isdigit() and len(raw) < 18
    other = selectors.model_get(model_id=int(raw)) if ok else None
    ctx = {"model": model, "other": other}
    if other is not None:
        try:
            matrix = selectors.compatibility(models=[model, other])
            ctx["pair"] = matrix["pairs"][0]
        except (OSError, ValueError) as exc:
            ctx["error"] = str(exc)
    return render(request, "registry/_compat.html", ctx)


@login_required
def compatible_components(request, model_id: int, component_id: str):
    model = _model_or_404(model_id)
    ctx = {"model": model, "component_id": component_id,
           "matches": selectors.compatible_components(model=model, component_id=component_id)}
    return render(request, "registry/_compatible_components.html", ctx)


@login_required
@require_POST
def diff(request, model_id: int):
    model = _model_or_404(model_id)
    other = selectors.model_get(model_id=int(request.POST.get("other") or 0))
    if other is None or model.asset is None or other.asset is None:
        messages.error(request, "Pick another registered model to diff against.")
        return redirect("registry:model_detail", model_id=model.pk)
    try:
        job = job_submit(kind="diff_models", spec={"a": model.asset.name, "b": other.asset.name},
                         owner=request.user)
    except JobSpecError as exc:
        messages.error(request, str(exc))
        return redirect("registry:model_detail", model_id=model.pk)
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
def diff_report(request, name: str):
    try:
        version = asset_selectors.asset_version_get(ref=name)
    except LookupError as exc:
        raise Http404(str(exc)) from None
    if "diff.json" not in version.manifest:
        raise Http404(f"{name} is not a diff report")
    try:
        data = json.loads(asset_services.version_file(version, "diff.json").read_text())
    except (StoreError, OSError, ValueError) as exc:
        raise Http404(f"{name}: the diff report cannot be read ({exc})") from None
    layers = sorted(data["layers"].items(),
                    key=lambda kv: (kv[0] != "none", int(kv[0]) if kv[0].isdigit() else -1))
    kinds = sorted({k for _, row in layers for k in row})
    ctx = {"version": version, "data": data, "kinds": kinds,
           "layers": [(layer, [row.get(k) for k in kinds]) for layer, row in layers],
           "top": sorted(data["tensors"], key=lambda t: -t["rel_l2"])[:30],
           "heatmap_url": reverse("assets:file_raw", args=[version.asset.name, version.number,
                                                           "heatmap.png"])}
    return render(request, "registry/diff_report.html", ctx)


@login_required
@require_POST
def import_gguf(request):
    """Submit the import of a GGUF file on the server; the worker dequantizes it. Only the
    path is checked here (a readable .gguf file under a root the web may read): the web
    process never loads it."""
    raw = request.POST.get("path", "").strip()
    problem = None
    if not raw:
        problem = "Give the path of a .gguf file on the server."
    else:
        try:
            path = web_path_check(raw)  # before anything else: nothing told about other paths
        except PathNotAllowedError as exc:
            problem = str(exc)
        else:
            if path.suffix.lower() != ".gguf":
                problem = f"{raw}: not a .gguf file."
            elif not path.is_file() or not os.access(path, os.R_OK):
                problem = f"{raw}: no such readable file on the server."
    if problem is None:
        spec = {"path": str(path), "name": request.POST.get("name", "").strip() or None}
        try:
            job = job_submit(kind="import_gguf", spec=spec, owner=request.user)
        except JobSpecError as exc:
            problem = str(exc)
    if problem is not None:
        messages.error(request, problem)
        return redirect("registry:index")
    return redirect("monitoring:job_detail", job_id=job.pk)


@login_required
@require_POST
def demo_smollm2(request):
    job = job_submit(kind="demo_smollm2", spec={}, owner=request.user)
    return redirect("monitoring:job_detail", job_id=job.pk)
