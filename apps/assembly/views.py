from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from apps.assembly import services
from apps.assembly.engine.gradients import GradientError, find_gradients, parse_points, resample, set_gradient
from apps.assembly.engine.plan import PlanError
from apps.assembly.engine.recipe import RecipeError
from apps.monitoring.charts import line_chart_svg
from apps.monitoring.selectors import job_list
from apps.monitoring.services import JobSpecError, job_submit
from apps.registry.selectors import models_list

EXAMPLE = """merge_method: linear
models:
  - model: demo-llama-tune-even
    parameters: {weight: 0.5}
  - model: demo-llama-tune-late
    parameters: {weight: 0.5}
dtype: float32
validation:
  max_samples: 8
  gates: [{metric: loss_ratio_to_best_parent, max: 1.2}]
  samples: ["The json module"]
"""


COMMON_METHODS = ("linear", "slerp", "ties", "task_arithmetic", "dare_ties", "model_stock")


def recipe_from_form(data) -> str | None:
    """The YAML for the common cases the form offers (two or more models, one method)."""
    method = data.get("method")
    models = [m for m in data.getlist("models") if m]
    if method not in COMMON_METHODS or not models:
        return None
    base = data.get("base") or ""
    weight = data.get("weight") or "1.0"
    density = data.get("density") or "0.5"
    lines = [f"merge_method: {method}"]
    if method in ("ties", "task_arithmetic", "dare_ties", "model_stock", "slerp") and base:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for m in models:
        lines.append(f"  - model: {m}")
        if method in ("linear", "task_arithmetic"):
            lines.append(f"    parameters: {{weight: {weight}}}")
        elif method in ("ties", "dare_ties"):
            lines.append(f"    parameters: {{weight: {weight}, density: {density}}}")
    if method == "slerp":
        lines.append("parameters:\n  t: [0.0, 0.5, 1.0]  # a gradient across the layers")
    lines.append("dtype: float32")
    return "\n".join(lines) + "\n"


def _gradient_chart(plan: dict) -> str:
    """Each numeric parameter's value at each output layer: the gradients, drawn."""
    series: dict[str, dict[int, float]] = {}
    for out in plan["outputs"]:
        if out["layer"] is None:
            continue
        for name, value in out["params"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(name, {}).setdefault(out["layer"], value)
        for i, src in enumerate(out["sources"]):
            for name, value in src["params"].items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    series.setdefault(f"{name}[{i}]", {}).setdefault(out["layer"], value)
    varying = {k: sorted(v.items()) for k, v in series.items() if len(set(v.values())) > 1}
    return line_chart_svg(varying, width=420, height=140) if varying else ""


def _plan_context(text: str) -> dict:
    try:
        gradients = find_gradients(text)
    except GradientError:
        gradients = []
    try:
        plan = services.recipe_plan(text, web=True)  # paths only under the web's roots
    except (RecipeError, PlanError) as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        return {"problems": problems, "gradients": gradients}
    except (OSError, ValueError) as exc:
        return {"problems": [str(exc)], "gradients": gradients}
    data = plan.to_json()
    by_method: dict[str, int] = {}
    for out in data["outputs"]:
        by_method[out["method"]] = by_method.get(out["method"], 0) + 1
    return {"plan": data, "by_method": by_method, "gradients": gradients,
            "gradient_svg": mark_safe(_gradient_chart(data))}  # noqa: S308 - numbers and escaped names


def _recipes(request):
    return services.recipes_visible(user=request.user)[:50]


@login_required
def editor(request):
    raw = request.GET.get("recipe") or ""
    recipe = services.recipes_visible(user=request.user).filter(pk=raw).first() \
        if raw.isascii() and raw.isdigit() and len(raw) < 18 else None  # not "²", not 30 digits
    text = recipe.text if recipe else (recipe_from_form(request.GET) or EXAMPLE)
    ctx = {"text": text, "name": recipe.name if recipe else "", "recipes": _recipes(request),
           "methods": COMMON_METHODS,
           "registry": models_list(user=request.user).filter(error="").exclude(asset=None),
           "jobs": job_list(user=request.user, area="assembly")[:10], **_plan_context(text)}
    return render(request, "assembly/editor.html", ctx)


@login_required
@require_POST
def plan(request):
    """The plan panel, re-rendered as the recipe is typed."""
    return render(request, "assembly/_plan.html", _plan_context(request.POST.get("recipe", "")))


@login_required
@require_POST
def gradient(request):
    """One gradient edited in place: its points set, or one more or fewer (the same curve,
    resampled). Answers the plan panel and, out of band, the rewritten recipe."""
    text = request.POST.get("recipe", "")
    path, row, op = request.POST.get("path", ""), request.POST.get("row", ""), request.POST.get("op", "set")
    error = None
    try:
        values = parse_points(request.POST.getlist(f"v-{row}"))
        if op in ("add", "remove"):
            values = resample(values, len(values) + (1 if op == "add" else -1))
        text = set_gradient(text, path, values)
    except GradientError as exc:  # a bad number, a point count out of range, no such gradient
        error = f"{path}: {exc}"
    ctx = {"text": text, **_plan_context(text)}
    if error:
        ctx["gradient_error"] = error
    return render(request, "assembly/_gradient_update.html", ctx)


@login_required
@require_POST
def run(request):
    text = request.POST.get("recipe", "")
    name = request.POST.get("name", "").strip()
    if not name:
        messages.error(request, "Give the result a name.")
        return render(request, "assembly/editor.html", {"text": text, "name": name,
                                                        "recipes": _recipes(request),
                                                        **_plan_context(text)}, status=400)
    if request.POST.get("save"):
        try:
            services.recipe_save(name=name, text=text, owner=request.user,
                                 visibility=request.POST.get("recipe_visibility") or None)
        except ValueError as exc:  # the name is someone else's, or a bad visibility
            messages.error(request, f"Not saved: {exc}")
            return render(request, "assembly/editor.html", {"text": text, "name": name,
                                                            "recipes": _recipes(request),
                                                            **_plan_context(text)}, status=409)
    context = _plan_context(text)
    if context.get("problems"):
        # Planned as the browser may (paths under the web's roots only) before the job is
        # queued: the job's own check would read any path the worker can.
        messages.error(request, "The recipe does not plan: " + "; ".join(context["problems"]))
        return render(request, "assembly/editor.html", {"text": text, "name": name,
                                                        "recipes": _recipes(request),
                                                        **context}, status=400)
    try:
        job = job_submit(kind="assemble", spec={"recipe": text, "name": name}, owner=request.user)
    except JobSpecError as exc:
        messages.error(request, str(exc))
        return render(request, "assembly/editor.html", {"text": text, "name": name,
                                                        "recipes": _recipes(request),
                                                        **_plan_context(text)}, status=400)
    return redirect("monitoring:job_detail", job_id=job.pk)
