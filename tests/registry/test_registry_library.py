"""The registry in the app: scans register models in place, rescans are incremental,
bad models are reported and skipped, import into the store, compare, diff, pages."""

import json
import shutil

import pytest
from django.urls import reverse

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.registry import services
from apps.registry.models import DiscoveredModel
from tests.registry.zoo import llama_like

pytestmark = pytest.mark.django_db


@pytest.fixture
def zoo(tmp_path):
    root = tmp_path / "zoo"
    base = llama_like(root / "base")
    llama_like(root / "tuned", base=base, scale=0.01, seed=1)
    llama_like(root / "wide", hidden=32, seed=2)
    broken = root / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\xff" * 4)  # truncated: not even a length
    return root


def test_scan_registers_each_model_in_place_and_reports_the_broken_one(zoo, fresh_library):
    result = services.scan_models(paths=[zoo])
    assert (result["found"], result["inspected"]) == (4, 4)
    assert [e["path"] for e in result["errors"]] == [str(zoo / "broken")]
    assert "model.safetensors" in result["errors"][0]["error"]
    base = DiscoveredModel.objects.get(name="base")
    assert base.architecture == "llama" and base.parameters > 0 and base.report["schema"]
    version = asset_selectors.asset_version_get(ref="base")
    assert version.location == str(zoo / "base")
    assert sorted(version.manifest) == ["config.json", "model.safetensors"]
    assert asset_services.blob_store().usage() == (0, 0)  # nothing copied
    assert DiscoveredModel.objects.get(name="broken").asset is None


def test_rescan_only_reads_what_changed(zoo, fresh_library, monkeypatch):
    services.scan_models(paths=[zoo])
    again = services.scan_models(paths=[zoo])
    assert (again["inspected"], again["unchanged"]) == (0, 4)
    shutil.rmtree(zoo / "broken")
    (zoo / "base" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16,
                                                          "num_hidden_layers": 2}))
    third = services.scan_models()  # every known root
    assert (third["inspected"], third["missing"]) == (1, 1)
    assert asset_selectors.asset_version_get(ref="base").number == 2
    assert DiscoveredModel.objects.get(name="broken").missing


def test_import_into_the_store_makes_a_stored_version(zoo, fresh_library):
    services.scan_models(paths=[zoo])
    version = services.model_import(model=DiscoveredModel.objects.get(name="base"))
    assert version.number == 2 and not version.location
    assert list(version.parents.values_list("number", flat=True)) == [1]
    assert asset_services.store_verify()[0].ok
    assert services.version_folder(version) != zoo / "base"
    stored = services.version_folder(version) / "config.json"
    assert stored.read_text() == (zoo / "base" / "config.json").read_text()


def test_compare_and_diff(zoo, fresh_library, tmp_path):
    services.scan_models(paths=[zoo])
    report = services.models_diff(a="base", b="tuned", out=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    data = json.loads(services.version_text(report, "diff.json"))
    assert 0 < data["max_rel_l2"] < 0.1
    assert sorted(report.manifest) == ["diff.json", "heatmap.png"]
    parents = sorted(str(p) for p in report.parents.all())
    assert parents == ["base@1", "tuned@1"]
    with pytest.raises(services.ModelRefError, match="neither a path nor a library model"):
        services.resolve_model("no-such-model")


def test_model_pages(client, user, zoo, fresh_library):
    client.force_login(user)
    services.scan_models(paths=[zoo])
    base = DiscoveredModel.objects.get(name="base")
    wide = DiscoveredModel.objects.get(name="wide")
    listing = client.get(reverse("registry:index")).content.decode()
    assert "base" in listing and "llama" in listing and "broken" in listing
    page = client.get(reverse("registry:model_detail", args=[base.pk])).content.decode()
    assert 'id="component-tree"' in page and "model.layers.0.self_attn.q_proj.weight" in page
    compat = client.get(reverse("registry:compat", args=[base.pk]), {"other": wide.pk}).content.decode()
    assert "weight merge" in compat and 'class="no"' in compat
    tuned = DiscoveredModel.objects.get(name="tuned")
    compat = client.get(reverse("registry:compat", args=[base.pk]), {"other": tuned.pk}).content.decode()
    assert 'class="no"' not in compat.split("apply adapter")[0]
    resp = client.post(reverse("registry:diff", args=[base.pk]), {"other": tuned.pk})
    assert resp.status_code == 302
    report = client.get(reverse("registry:diff_report", args=["diff base vs tuned"])).content.decode()
    assert 'id="diff-heatmap"' in report and "model.layers" in report


def test_demo_models_are_real_and_registered(fresh_library):
    from apps.registry.engine.compat import compatibility_matrix
    from apps.registry.engine.model import read_model

    assert "audobon demo_models" in services.demo_models_offer()
    result = services.demo_models_register()
    names = set(DiscoveredModel.objects.values_list("name", flat=True))
    assert {"demo-llama-base", "demo-llama-tune-even", "demo-llama-tune-late", "all-MiniLM-L6-v2"} <= names
    assert not [m.error for m in DiscoveredModel.objects.all() if m.error]
    minilm = DiscoveredModel.objects.get(source="demo", architecture="bert")
    assert minilm.parameters == 22_713_728
    base, tune = (read_model(services.resolve_model(n)[0])
                  for n in ("demo-llama-base", "demo-llama-tune-late"))
    pair = compatibility_matrix({"base": base, "tune": tune})["pairs"][0]
    assert pair["weight_merge"]["ok"] and pair["layer_splice"]["ok"]
    assert services.demo_models_offer() is None
    again = services.demo_models_register()  # nothing new the second time
    assert all(r["inspected"] == 0 for r in again.values()), (result, again)


def test_compare_many_and_import_from_the_page(client, user, zoo, fresh_library):
    client.force_login(user)
    services.scan_models(paths=[zoo])
    ids = [DiscoveredModel.objects.get(name=n).pk for n in ("base", "tuned", "wide")]
    page = client.get(reverse("registry:compare"), {"ids": ids}).content.decode()
    assert page.count("<h2>") == 3 and "base \u00d7 wide" in page
    assert "Pick two or more" in client.get(reverse("registry:compare"), {"ids": ids[:1]}).content.decode()
    resp = client.post(reverse("registry:import_model", args=[ids[0]]), {"link": "1"})
    assert resp.status_code == 302
    version = asset_selectors.asset_version_get(ref="base")
    assert version.number == 2 and not version.location


def test_two_folders_with_the_same_name_are_two_assets(tmp_path, fresh_library):
    llama_like(tmp_path / "a" / "llama")
    llama_like(tmp_path / "b" / "llama", seed=3)
    services.scan_models(paths=[tmp_path / "a", tmp_path / "b"])
    names = sorted(m.asset.name for m in DiscoveredModel.objects.all())
    assert names == ["b--llama", "llama"]
    assert asset_selectors.asset_version_get(ref="llama").number == 1
    (tmp_path / "b" / "llama" / "config.json").write_text('{"model_type": "llama"}')
    services.scan_models()
    assert asset_selectors.asset_version_get(ref="b--llama").number == 2  # its own history
