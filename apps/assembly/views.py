from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.assembly import services
from apps.assembly.engine.plan import PlanError
from apps.assembly.engine.recipe import RecipeError
from apps.assembly.models import Recipe
from apps.monitoring.selectors import job_list
from apps.monitoring.services import JobSpecError, job_submit

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


def _plan_context(text: str) -> dict:
    try:
        plan = services.recipe_plan(text)
    except (RecipeError, PlanError) as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        return {"problems": problems}
    except (OSError, ValueError) as exc:
        return {"problems": [str(exc)]}
    data = plan.to_json()
    by_method: dict[str, int] = {}
    for out in data["outputs"]:
        by_method[out["method"]] = by_method.get(out["method"], 0) + 1
    return {"plan": data, "by_method": by_method}


@login_required
def editor(request):
    recipe = Recipe.objects.filter(pk=request.GET.get("recipe") or 0).first()
    text = recipe.text if recipe else EXAMPLE
    ctx = {"text": text, "name": recipe.name if recipe else "", "recipes": Recipe.objects.all()[:50],
           "jobs": job_list(user=request.user, area="assembly")[:10], **_plan_context(text)}
    return render(request, "assembly/editor.html", ctx)


@login_required
@require_POST
def plan(request):
    """The plan panel, re-rendered as the recipe is typed."""
    return render(request, "assembly/_plan.html", _plan_context(request.POST.get("recipe", "")))


@login_required
@require_POST
def run(request):
    text = request.POST.get("recipe", "")
    name = request.POST.get("name", "").strip()
    if request.POST.get("save") and name:
        Recipe.objects.update_or_create(name=name, defaults={"text": text, "owner": request.user})
    if not name:
        messages.error(request, "Give the result a name.")
        return render(request, "assembly/editor.html", {"text": text, "name": name,
                                                        "recipes": Recipe.objects.all()[:50],
                                                        **_plan_context(text)}, status=400)
    try:
        job = job_submit(kind="assemble", spec={"recipe": text, "name": name}, owner=request.user)
    except JobSpecError as exc:
        messages.error(request, str(exc))
        return render(request, "assembly/editor.html", {"text": text, "name": name,
                                                        "recipes": Recipe.objects.all()[:50],
                                                        **_plan_context(text)}, status=400)
    return redirect("monitoring:job_detail", job_id=job.pk)
