"""Assembly in the app: recipes over registered models become library versions with their
parents, validation and recipe; the same recipe is never computed twice; bad recipes and
failed gates register nothing."""

import pytest
from django.urls import reverse

from apps.assembly import services
from apps.assembly.engine.plan import PlanError
from apps.assets import selectors as asset_selectors
from apps.assets.models import Asset
from apps.monitoring.services import JobSpecError, job_submit
from apps.registry import services as registry_services

pytestmark = pytest.mark.django_db

RECIPE = """merge_method: linear
models:
  - model: demo-llama-tune-even
    parameters: {weight: 0.5}
  - model: demo-llama-tune-late
    parameters: {weight: 0.5}
validation:
  max_samples: 4
  gates: [{metric: loss_ratio_to_best_parent, max: 1.5}]
  samples: ["The json module"]
"""


@pytest.fixture
def demo(fresh_library):
    registry_services.demo_models_register()


def test_assemble_registers_a_version_with_lineage_validation_and_recipe(demo):
    version, reused = services.assemble(text=RECIPE, name="even-late")
    assert not reused and version.asset.kind == "model"
    assert sorted(str(p) for p in version.parents.all()) == ["demo-llama-tune-even@1",
                                                             "demo-llama-tune-late@1"]
    assert version.spec["recipe"] == RECIPE and version.spec["method"] == "linear"
    val = version.metadata["validation"]
    assert val["ok"] and set(val["losses"]) == {"result", "demo-llama-tune-even", "demo-llama-tune-late"}
    assert "model.safetensors" in version.manifest and "README.md" in version.manifest
    again, reused = services.assemble(text=RECIPE, name="even-late")
    assert reused and again.pk == version.pk  # the same recipe over the same inputs: at once


def test_a_reused_result_is_still_written_to_out(demo, tmp_path):
    version, _ = services.assemble(text=RECIPE, name="even-late")
    again, reused = services.assemble(text=RECIPE, name="even-late", out=tmp_path / "out")
    assert reused and again.pk == version.pk
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
                     if p.is_file())
    assert written == sorted(version.manifest)


def test_out_is_the_stored_model_and_the_store_takes_the_hashes_taken_while_writing(demo, tmp_path):
    """`--out` holds the very files of the version (written from the same bytes, not a second
    merge); the store took the weights by the hashes the writer computed and still verifies."""
    import hashlib

    from apps.assets.services import store_verify, version_file

    version, _ = services.assemble(text=RECIPE, name="even-late", out=tmp_path / "out")
    for path, entry in version.manifest.items():
        data = (tmp_path / "out" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], path
        assert version_file(version, path).read_bytes() == data
    report, affected = store_verify()
    assert report.ok and affected == []
    assert not list(tmp_path.glob(".out*"))  # no staging folder left


def test_an_existing_out_is_refused_before_anything_is_merged(demo, tmp_path, monkeypatch):
    from apps.assembly.engine import executor

    def never(*args, **kwargs):
        raise AssertionError("merged although --out exists")

    monkeypatch.setattr(executor, "execute", never)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        services.assemble(text=RECIPE, name="even-late", out=tmp_path / "out")
    assert not Asset.objects.filter(name="even-late").exists()


def test_a_failing_gate_registers_nothing(demo, tmp_path):
    strict = RECIPE.replace("max: 1.5", "max: 0.001")
    with pytest.raises(services.GateFailedError, match="loss_ratio_to_best_parent"):
        services.assemble(text=strict, name="too-strict", out=tmp_path / "out")
    assert not list(tmp_path.glob("*out*"))  # neither --out nor its staging folder
    assert not Asset.objects.filter(name="too-strict").exists()


@pytest.mark.parametrize(("change", "message"), [
    (("merge_method: linear", "merge_method: blend"), "blend"),
    (("demo-llama-tune-late", "no-such-model"), "no-such-model"),
    (("parameters: {weight: 0.5}\n  - model: demo-llama-tune-late\n    parameters: {weight: 0.5}",
      "parameters: {weight: 0.5}\n  - model: demo-llama-tune-late\n    parameters: {weight: abc}"),
     "weight"),
])
def test_plan_time_errors_queue_nothing(demo, change, message):
    bad = RECIPE.replace(*change)
    with pytest.raises((PlanError, ValueError), match=message):
        services.recipe_plan(bad)
    with pytest.raises(JobSpecError, match=message):
        job_submit(kind="assemble", spec={"recipe": bad, "name": "x"})


def test_density_outside_its_range_is_refused(demo):
    ties = ("merge_method: ties\nbase_model: demo-llama-base\nmodels:\n"
            "  - model: demo-llama-tune-even\n    parameters: {density: 1.5, weight: 1}\n")
    with pytest.raises(PlanError, match=r"density must be in \(0, 1\]"):
        services.recipe_plan(ties)


def test_extract_lora_and_components_become_assets(demo):
    lora = services.lora_extract(base="demo-llama-base", tuned="demo-llama-tune-late", rank=4, energy=None,
                                 name=None)
    assert lora.asset.kind == "adapter" and "adapter_config.json" in lora.manifest
    comp = services.components_extract(model="demo-llama-tune-late", select=["layers 2-3"], name="late-top")
    assert comp.asset.kind == "component"
    assert [c["id"] for c in comp.metadata["components"]] == ["model.layers.2", "model.layers.3"]
    assert str(next(iter(comp.parents.all()))) == "demo-llama-tune-late@1"


def test_editor_shows_the_plan_as_it_is_typed_and_runs(client, user, demo):
    client.force_login(user)
    page = client.get(reverse("assembly:index")).content.decode()
    assert 'hx-post="/assembly/plan/"' in page and 'id="plan-facts"' in page
    typo = RECIPE.replace("linear", "linaer")
    part = client.post(reverse("assembly:plan"), {"recipe": typo}).content.decode()
    assert 'id="plan-problems"' in part and "linaer" in part
    resp = client.post(reverse("assembly:run"), {"recipe": RECIPE, "name": "from-the-page", "save": "1"})
    assert resp.status_code == 302
    version = asset_selectors.asset_version_get(ref="from-the-page")
    detail = client.get(reverse("assets:asset_detail", args=["from-the-page"])).content.decode()
    assert 'id="validation"' in detail and "gates passed" in detail and version.number == 1


def test_common_case_form_writes_a_recipe_and_gradients_are_drawn(client, user, demo):
    client.force_login(user)
    page = client.get(reverse("assembly:index"), {
        "method": "slerp", "models": ["demo-llama-tune-even", "demo-llama-tune-late"],
        "base": "demo-llama-tune-even"}).content.decode()
    assert "merge_method: slerp" in page and "base_model: demo-llama-tune-even" in page
    assert 'id="gradient-chart"' in page and "<title>t</title>" in page


def test_an_extracted_component_is_grafted_by_a_later_recipe(demo):
    import torch
    from safetensors.torch import load_file

    comp = services.components_extract(model="demo-llama-tune-late", select=["layers 3-3"], name="late-3")
    recipe = ("merge_method: linear\nmodels:\n  - model: demo-llama-base\n    parameters: {weight: 1.0}\n"
              "graft:\n  - component: model.layers.3\n    from: asset:late-3\n")
    version, _ = services.assemble(text=recipe, name="base-with-late-3")
    assert "late-3@1" in [str(p) for p in version.parents.all()]
    folder = registry_services.version_folder(version)
    merged = load_file(str(folder / "model.safetensors"))
    donor = load_file(str(registry_services.version_folder(comp) / "model.safetensors"))
    base = load_file(str(registry_services.resolve_model("demo-llama-base")[0] / "model.safetensors"))
    name = "model.layers.3.mlp.up_proj.weight"
    assert torch.equal(merged[name], donor[name])
    assert torch.equal(merged["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])
    assert version.metadata["validation"]["losses"]["result"] > 0  # validated though the recipe asked nothing


def test_a_missing_model_is_named_once(fresh_library):
    """The resolver's own sentence is the message, not repeated in brackets after it."""
    from apps.assembly import services
    from apps.assembly.engine.plan import ModelNotFoundError

    with pytest.raises(ModelNotFoundError) as err:
        services.recipe_plan("merge_method: linear\nmodels:\n  - model: nowhere-a\n"
                             "    parameters: {weight: 1}\n")
    assert str(err.value).count("nowhere-a") == 1 and "is not in the registry" in str(err.value)


def test_a_submitted_recipe_is_planned_once_at_submission_and_once_in_the_worker(demo, monkeypatch):
    """The worker's spec check, its memory check and the run share one plan."""
    from apps.assembly import services
    from apps.monitoring.services import job_submit

    calls = []
    real = services.recipe_plan

    def counting(text, **kw):
        calls.append(text)
        return real(text, **kw)

    monkeypatch.setattr(services, "recipe_plan", counting)
    recipe = ("merge_method: linear\nmodels:\n"
              "  - model: demo-llama-tune-even\n    parameters: {weight: 0.5}\n"
              "  - model: demo-llama-tune-late\n    parameters: {weight: 0.5}\n")
    job = job_submit(kind="assemble", spec={"recipe": recipe, "name": "planned-twice"})
    assert job.status == "succeeded", job.error
    assert len(calls) == 2  # submission, then the worker (tests run the queue inline)
