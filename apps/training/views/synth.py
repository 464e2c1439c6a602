"""The synthetic-data page: a form for the common case (self-instruct from seed tasks with a
registered model) that submits a `synth_dataset` job and goes to its page. Templates and the
other settings are for `audobon synth_dataset SPEC.yaml`."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from apps.monitoring.selectors import job_list
from apps.monitoring.services import JobSpecError, job_submit
from apps.registry.selectors import models_list
from apps.training.engine.synth import DEFAULT_GENERATOR, DEFAULT_THRESHOLDS

MAX_SEED_TASKS = 500
EXAMPLE_TASKS = ("Write a haiku about autumn leaves.\n"
                 "Explain what a Python list comprehension is, with an example.\n"
                 "Give three tips for a first job interview.\n"
                 "Summarise the plot of Romeo and Juliet in two sentences.")


def _generators() -> list[str]:
    names = {m.asset.name for m in models_list().filter(error="").exclude(asset=None)
             if m.asset.kind == "model"}
    return sorted(names, key=lambda n: (n != DEFAULT_GENERATOR, n.lower()))


class SynthForm(forms.Form):
    name = forms.CharField(max_length=200, label="Dataset name")
    generator = forms.ChoiceField(label="Generator model")
    seed_tasks = forms.CharField(widget=forms.Textarea(attrs={"rows": 8, "cols": 80}), max_length=64_000,
                                 label="Seed tasks, one per line", initial=EXAMPLE_TASKS)
    num_rows = forms.IntegerField(min_value=1, max_value=100_000, initial=40, label="Rows to generate")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=256)
    temperature = forms.FloatField(min_value=0, max_value=2, initial=0.7)
    dedup = forms.ChoiceField(choices=[
        ("rouge_l", f"ROUGE-L (at or above {DEFAULT_THRESHOLDS['rouge_l']})"),
        ("embedding", f"MiniLM embeddings (cosine at or above {DEFAULT_THRESHOLDS['embedding']})"),
        ("none", "none")], initial="rouge_l", label="De-duplication")
    threshold = forms.FloatField(min_value=0.01, max_value=1, required=False,
                                 help_text="empty: the method's default")
    seed = forms.IntegerField(min_value=0, initial=0)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["generator"].choices = [(n, n) for n in _generators()]

    def clean_seed_tasks(self):
        lines = [line.strip() for line in self.cleaned_data["seed_tasks"].splitlines() if line.strip()]
        if not lines:
            raise forms.ValidationError("give at least one seed task")
        if len(lines) > MAX_SEED_TASKS:
            raise forms.ValidationError(f"at most {MAX_SEED_TASKS} seed tasks here; use a seed dataset")
        return lines

    def spec(self) -> dict:
        d = self.cleaned_data
        dedup = {"method": d["dedup"]}
        if d["threshold"] is not None and d["dedup"] != "none":
            dedup["threshold"] = d["threshold"]
        return {"name": d["name"], "method": "self_instruct", "generator": d["generator"],
                "seed_tasks": [{"instruction": t} for t in d["seed_tasks"]], "num_rows": d["num_rows"],
                "sampling": {"max_new_tokens": d["max_new_tokens"], "temperature": d["temperature"]},
                "dedup": dedup, "seed": d["seed"]}


@login_required
def synth(request):
    form = SynthForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                job = job_submit(kind="synth_dataset", spec=form.spec(), owner=request.user)
            except JobSpecError as exc:
                messages.error(request, str(exc))
            else:
                return redirect("monitoring:job_detail", job_id=job.pk)
        status = 400
    jobs = job_list(user=request.user, kind="synth_dataset")[:10]
    return render(request, "training/synth.html", {"form": form, "jobs": jobs}, status=status)
