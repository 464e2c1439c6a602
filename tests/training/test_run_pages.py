"""The training runs UI: the new-run form and its live memory estimate, the run page (charts
rebuilt from stored events, evaluation, checkpoints, resume, "Try it"), compare, the
`runs` and `try_it` commands, and who may see a run. Runs are tiny (2-4 steps) on the
seeded demo Llama; tasks run inline."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from apps.assets import services as asset_services
from apps.monitoring.models import Job
from apps.registry.engine.demo_models import make_llama_family
from apps.registry.services import scan_models
from apps.training.models import TrainingRun
from tests.training.builders import write_chat_dataset

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("family") / "llama")


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return write_chat_dataset(tmp_path_factory.mktemp("data") / "chat", n_train=16, n_val=4)


@pytest.fixture
def library(family, chat_folder, fresh_library):
    scan_models(paths=[Path(family["base"]).parent])
    asset_services.asset_import(source=chat_folder, kind="dataset", name="docs-chat")
    return fresh_library


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


def _form(**overrides) -> dict:
    """A tiny run as the form posts it."""
    data = {"base_model": "demo-llama-base", "dataset": "docs-chat", "task": "causal_lm", "method": "lora",
            "lora_r": "4", "lora_alpha": "8", "lora_dropout": "0", "learning_rate": "0.002",
            "batch_size": "2", "max_steps": "2", "eval_steps": "2", "save_steps": "2", "seed": "7",
            "max_length": "256", "name": ""}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _start(client, **overrides) -> TrainingRun:
    response = client.post(reverse("training:run_new"), _form(**overrides))
    assert response.status_code == 302, response.content.decode()[:2000]
    run = TrainingRun.objects.order_by("-pk").first()
    assert response["Location"] == reverse("training:run_detail", kwargs={"run_id": run.pk})
    return run


def _command(*args) -> dict:
    out = io.StringIO()
    call_command(*args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def _polyline_count(html: str, chart_id: str) -> int:
    match = re.search(rf'id="{chart_id}".*?</svg>', html, re.S)
    assert match, f"no chart {chart_id}"
    return match.group(0).count("<polyline")


# --- the new-run form --------------------------------------------------------------------------

def test_the_form_renders_with_defaults_for_the_base_and_an_estimate(library, logged_in):
    html = logged_in.get(reverse("training:run_new")).content.decode()
    assert '<option value="demo-llama-base" selected>' in html
    assert '<option value="docs-chat" selected>' in html
    # The demo base is tiny: the small-model defaults (batch 8, r 16), and rows as long as it
    # reads (256 tokens, under the default of 512).
    assert 'name="batch_size" id="id_batch_size" value="8"' in html
    assert 'name="lora_r" id="id_lora_r" type="number" min="1" max="1024" value="16"' in html
    assert 'name="max_length" id="id_max_length" type="number" min="8" value="256"' in html
    assert re.search(r'id="estimate-bytes" data-bytes="[1-9]\d*"', html)
    assert "base_model: demo-llama-base" in html  # the YAML alternative starts from the same spec
    # Picking a base (htmx) answers the fields and, out of band, the estimate.
    part = logged_in.get(reverse("training:run_new"), {"base_model": "demo-llama-tune-even"}, **HTMX)
    body = part.content.decode()
    assert 'id="run-fields"' in body and 'hx-swap-oob="true"' in body and "<html" not in body


def test_the_estimate_answers_a_number_or_names_the_bad_key(library, logged_in):
    url = reverse("training:run_estimate")
    ok = logged_in.post(url, _form(), **HTMX).content.decode()
    small = int(re.search(r'data-bytes="(\d+)"', ok).group(1))
    bigger = logged_in.post(url, _form(batch_size="16"), **HTMX).content.decode()
    assert int(re.search(r'data-bytes="(\d+)"', bigger).group(1)) > small
    assert "activations" in ok and "<html" not in ok

    too_long = logged_in.post(url, _form(max_length="512"), **HTMX).content.decode()
    assert "max_length: 512 is above demo-llama-base&#x27;s maximum of 256 tokens" in too_long
    bad = logged_in.post(url, _form(lora_r="0"), **HTMX).content.decode()
    assert "lora.r:" in bad and "data-bytes" not in bad
    assert "learning_rate: &#x27;fast&#x27; is not a number" in logged_in.post(
        url, _form(learning_rate="fast"), **HTMX).content.decode()
    assert "dataset: no asset named" in logged_in.post(url, _form(dataset="nope"), **HTMX).content.decode()
    yaml_bad = {"use_yaml": "1",
                "spec_yaml": "base_model: demo-llama-base\ndataset: docs-chat\nlora: {rank: 4}\n"}
    assert "lora.rank: unknown key" in logged_in.post(url, yaml_bad, **HTMX).content.decode()
    # From the browser only library names: a path would read any folder on the server.
    assert "not a library name" in logged_in.post(url, _form(base_model="/etc"), **HTMX).content.decode()
    # Without JavaScript the same check answers the whole form.
    page = logged_in.post(url, _form(lora_r="0")).content.decode()
    assert "<html" in page and "lora.r:" in page


def test_a_bad_run_rerenders_the_form_and_queues_nothing(library, logged_in):
    response = logged_in.post(reverse("training:run_new"), _form(max_steps="0", name="kept name"))
    assert response.status_code == 400
    html = response.content.decode()
    assert "Nothing was started" in html and "max_steps" in html
    assert 'value="kept name"' in html
    assert not TrainingRun.objects.exists() and not Job.objects.exists()


def test_the_form_says_what_to_do_on_an_empty_library(fresh_library, logged_in):
    html = logged_in.get(reverse("training:run_new")).content.decode()
    assert "No models are registered yet" in html and "No datasets yet" in html


# --- a run, its page, Try it, the commands, who sees it ----------------------------------------

def test_a_run_from_the_form_to_its_page_try_it_and_the_commands(library, logged_in, client, other_user,
                                                                   django_user_model):
    run = _start(logged_in, name="docs-lora")
    job = run.jobs.get()
    assert job.status == "succeeded", job.error
    run.refresh_from_db()
    assert str(run.result) == "docs-lora@1"

    html = logged_in.get(reverse("training:run_detail", kwargs={"run_id": run.pk})).content.decode()
    assert 'id="run-status">succeeded<' in html
    assert _polyline_count(html, "chart-loss") == 2  # train and eval loss on one chart
    assert _polyline_count(html, "chart-learning_rate") == 1
    assert _polyline_count(html, "chart-tokens_per_s") == 1
    assert "<title>train_loss</title>" in html and "<title>eval_loss</title>" in html
    assert 'id="run-evaluation"' in html and "perplexity" in html
    before, after = run.metrics["before"]["loss"], run.metrics["after"]["loss"]
    assert str(before) in html and str(after) in html
    assert re.search(r"<td>checkpoint-2</td><td>2</td><td>[\d.]+\s(KB|MB|bytes)</td>",
                     html.replace("\xa0", " "))
    assert f'href="{reverse("assets:asset_detail", kwargs={"name": "docs-lora"})}"' in html
    assert 'id="resume-run"' not in html and "hx-trigger" not in html.split('id="run-live"')[1][:200]
    assert f'href="{reverse("training:dataset_detail", kwargs={"name": "docs-chat"})}"' in html
    assert "<code>lora.r</code>" in html  # the spec as a table
    # The htmx poll answers the live section alone.
    part = logged_in.get(reverse("training:run_detail", kwargs={"run_id": run.pk}), **HTMX).content.decode()
    assert part.lstrip().startswith('<div id="run-live"') and "<html" not in part

    # Try it: base and tuned side by side, from the page and from the command.
    response = logged_in.post(reverse("training:run_try", kwargs={"run_id": run.pk}),
                              {"prompt": "What does json.dumps do?", "max_new_tokens": "5"})
    assert response.status_code == 302 and response["Location"].endswith("#try-it")
    tried = Job.objects.get(kind="try_it")
    assert tried.status == "succeeded", tried.error
    assert set(tried.result) >= {"prompt", "base", "tuned"}
    assert not run.jobs.filter(kind="try_it").exists()  # a generation never blocks a resume
    html = logged_in.get(reverse("training:run_detail", kwargs={"run_id": run.pk})).content.decode()
    assert f'id="try-{tried.pk}"' in html and "What does json.dumps do?" in html
    from django.utils.html import escape

    assert escape(tried.result["tuned"]) in html
    out = _command("try_it", str(run.pk), "What does json.dumps do?", "--max-new-tokens", "5")
    assert out["base"] == tried.result["base"] and out["tuned"] == tried.result["tuned"]  # greedy
    try_url = reverse("training:run_try", kwargs={"run_id": run.pk})
    assert logged_in.post(try_url, {"prompt": " "}).status_code == 302
    assert Job.objects.filter(kind="try_it").count() == 2  # the empty prompt queued nothing

    # The index lists it; the commands show it.
    index = logged_in.get(reverse("training:index")).content.decode()
    assert f'id="run-row-{run.pk}"' in index and reverse("training:dataset_list") in index
    assert reverse("training:run_new") in index and reverse("training:synth") in index
    listed = _command("runs", "list")
    assert [r["id"] for r in listed["runs"]] == [run.pk] and listed["runs"][0]["status"] == "succeeded"
    shown = _command("runs", "show", str(run.pk))
    assert shown["result"] == "docs-lora@1" and shown["checkpoints"][0]["name"] == "checkpoint-2"

    # Another user sees none of it; staff see it.
    client.force_login(other_user)
    for url in (reverse("training:run_detail", kwargs={"run_id": run.pk}),
                reverse("training:compare") + f"?run={run.pk}&run={run.pk}"):
        assert client.get(url).status_code == 404
    assert client.post(reverse("training:run_resume", kwargs={"run_id": run.pk})).status_code == 404
    assert client.post(try_url, {"prompt": "x"}).status_code == 404
    assert f'id="run-row-{run.pk}"' not in client.get(reverse("training:index")).content.decode()
    staff = django_user_model.objects.create_user(username="root", password="pw-root-123456", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("training:run_detail", kwargs={"run_id": run.pk})).status_code == 200


def test_a_cancelled_run_resumes_from_its_page_and_the_curve_continues(library, logged_in, monkeypatch):
    from apps.monitoring.tasks import JobReporter

    calls: dict[int, int] = {}

    def stop_the_first_job_at_step_two(self):
        calls[self.job_id] = calls.get(self.job_id, 0) + 1
        return not Job.objects.get(pk=self.job_id).spec["resume"] and calls[self.job_id] >= 2

    monkeypatch.setattr(JobReporter, "cancelled", stop_the_first_job_at_step_two)
    run = _start(logged_in, max_steps="4", save_steps="50", eval_steps="50")
    first = run.jobs.get()
    assert first.status == "cancelled"
    url = reverse("training:run_detail", kwargs={"run_id": run.pk})
    html = logged_in.get(url).content.decode()
    assert 'id="resume-run"' in html and "Resume from checkpoint-2" in html
    assert "<td>checkpoint-2</td>" in html

    assert logged_in.post(reverse("training:run_resume", kwargs={"run_id": run.pk})).status_code == 302
    second = run.jobs.order_by("-pk").first()
    assert second.pk != first.pk and second.status == "succeeded", second.error
    html = logged_in.get(url).content.decode()
    assert 'id="run-status">succeeded<' in html and 'id="resume-run"' not in html
    assert f"#{first.pk}</a> <span class=\"status status-cancelled\">" in html
    # One curve over both jobs: steps 1-2 from the first, 3-4 from the resumed one.
    from apps.training.run_selectors import run_series

    assert [step for step, _ in run_series(run)["train_loss"]] == [1, 2, 3, 4]
    # Resuming a finished run is refused with a message, nothing queued.
    logged_in.post(reverse("training:run_resume", kwargs={"run_id": run.pk}))
    assert run.jobs.count() == 2


def test_two_runs_compared_overlay_their_curves_and_highlight_the_spec_diff(library, logged_in):
    a = _start(logged_in, name="run-a")
    b = _start(logged_in, name="run-b", learning_rate="0.0005", seed="8")
    html = logged_in.get(reverse("training:compare"), {"run": [a.pk, b.pk]}).content.decode()
    assert _polyline_count(html, "compare-train_loss") == 2
    assert f"<title>#{a.pk} run-a</title>" in html and f"<title>#{b.pk} run-b</title>" in html
    differs = re.findall(r'<tr class="differs"><th><code>([\w.]+)</code>', html)
    assert set(differs) == {"learning_rate", "name", "seed"}
    assert "<code>lora.r</code>" in html  # the same keys are listed too, not highlighted
    out = _command("runs", "compare", str(a.pk), str(b.pk))
    assert set(out["spec_differs"]) == {"learning_rate", "name", "seed"}
    assert out["series"]["train_loss"] == {f"#{a.pk} run-a": 2, f"#{b.pk} run-b": 2}
    # The index's checkboxes post to the compare page.
    index = logged_in.get(reverse("training:index")).content.decode()
    assert f'action="{reverse("training:compare")}"' in index and f'name="run" value="{a.pk}"' in index
    one = logged_in.get(reverse("training:compare"), {"run": [a.pk]}).content.decode()
    assert "Pick at least two runs" in one


def test_the_pages_never_import_torch(tmp_path):
    """The web process imports the views, selectors and job kinds without torch, transformers
    or peft."""
    code = ("import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'audobon_site.settings_test'; "
            "django.setup(); import apps.training.views.runs, apps.training.run_selectors, "
            "apps.training.tasks.try_it, apps.training.urls; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
