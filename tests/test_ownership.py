"""Owners and visibility: what one person on a LAN server can reach of another's work.

Cy (a regular user) owns a private asset, model, dataset, recipe, job, run and upload, all
named with a marker. Bob (another regular user) requests every URL the site has, filled
with Cy's things: each answers 403, 404 or 405, and no answer to Bob ever carries the
marker. Then sharing (everyone, a group), names taken, commands' `--owner`, and the first
admin taking over what was made before any account existed.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from safetensors.numpy import save_file

from apps.assembly import services as assembly_services
from apps.assembly.models import Recipe
from apps.assets import services as asset_services
from apps.assets.models import Asset, RecoveryPoint
from apps.monitoring import services as job_services
from apps.monitoring.models import Job
from apps.registry import services as registry_services
from apps.registry.engine.discovery import FoundModel, fingerprint
from apps.training.models import TrainingRun
from audobon_site.access import Visibility

MARK = "cysecret"
# Views anyone may reach without logging in, or whose answer is the same for everyone.
ANONYMOUS = {"login", "logout", "login_link", "healthz"}
# POSTs without an object of Cy's in the URL that start work for the caller (their own);
# not sent here: they are not a way into Cy's things.
OWN_WORK = {"selftest_submit", "upload_create", "demo", "demo_smollm2", "import_gguf", "plan",
            "gradient", "run", "run_new", "run_estimate", "synth", "dataset_upload"}


def _llama_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8,
        "num_hidden_layers": 1, "vocab_size": 16, "intermediate_size": 16,
        "num_attention_heads": 2, "num_key_value_heads": 2}))
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((16, 8), dtype=np.float32),
               "model.norm.weight": np.ones(8, dtype=np.float32),
               "lm_head.weight": rng.standard_normal((16, 8), dtype=np.float32)}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        tensors[f"model.layers.0.self_attn.{name}.weight"] = rng.standard_normal((8, 8), dtype=np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    return path


@pytest.fixture
def cy_things(tmp_path, third_user, user):
    """Cy's private things, each named with the marker."""
    cy = third_user
    files = tmp_path / f"{MARK}-notes"
    files.mkdir()
    (files / "notes.txt").write_text(f"{MARK} private notes\n")
    asset = asset_services.asset_import(source=files, kind="other", name=f"{MARK}-notes", owner=cy)
    data = tmp_path / f"{MARK}-data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"text": f"{MARK} row"}) + "\n")
    dataset = asset_services.asset_import(source=data, kind="dataset", name=f"{MARK}-data", owner=cy)
    model_dir = _llama_dir(tmp_path / "models" / f"{MARK}-model")
    found = FoundModel(model_dir, f"{MARK}-model", "test", fingerprint(model_dir))
    dm = registry_services._inspect_and_register(found, None, source="test", owner=cy)
    assert dm.asset is not None, dm.error
    Asset.objects.filter(pk=dm.asset_id).update(visibility=Visibility.PRIVATE)  # a scan shares; Cy did not
    recipe = Recipe.objects.create(name=f"{MARK}-recipe", text=f"# {MARK}\nmerge_method: linear\n", owner=cy)
    job = job_services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0}, owner=cy)
    run = TrainingRun.objects.create(name=f"{MARK}-run", owner=cy, spec={"name": f"{MARK}-run"})
    run.jobs.add(job)
    upload = asset_services.upload_create(owner=cy, name=f"{MARK}-upload", kind="other",
                                          files=[{"path": "a.txt", "size": 3}])
    point = asset_services.recovery_point_create(name=f"{MARK}-point", user=user)
    return {"asset": asset.asset, "dataset": dataset.asset, "model": dm, "recipe": recipe, "job": job,
            "run": run, "upload": upload, "point": point}


def _patterns(patterns=None, prefix=""):
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            if "admin" in str(p.pattern):
                continue  # Django's admin: staff only, by Django's own checks
            yield from _patterns(p.url_patterns, prefix + (f"{p.namespace}:" if p.namespace else ""))
        elif isinstance(p, URLPattern) and p.name:
            yield prefix + p.name, p


def _kwargs(name: str, pattern: URLPattern, things: dict) -> dict:
    """Cy's things for every parameter of a URL."""
    values = {"job_id": things["job"].pk, "run_id": things["run"].pk, "model_id": things["model"].pk,
              "upload_id": things["upload"].pk, "point_id": things["point"].pk, "number": 1,
              "index": 0, "component_id": "layers.0", "token": uuid.uuid4(), "kind": "store_gc",
              "path": "notes.txt"}
    kwargs = {}
    for key in pattern.pattern.converters:
        if key == "name":
            if name.startswith("training:"):
                kwargs[key] = things["dataset"].name
            elif name.startswith("monitoring:"):
                kwargs[key] = "heavy"  # a queue
            elif name == "registry:diff_report":
                kwargs[key] = things["asset"].name
            else:
                kwargs[key] = things["asset"].name
        else:
            kwargs[key] = values.get(key, "x")
    return kwargs


@pytest.mark.django_db(transaction=True)
def test_another_user_reaches_nothing_of_cys_through_any_url(client, other_user, cy_things):
    client.force_login(other_user)
    seen = []
    for name, pattern in _patterns():
        short = name.rpartition(":")[2]
        if short in ANONYMOUS:
            continue
        kwargs = _kwargs(name, pattern, cy_things)
        url = reverse(name, kwargs=kwargs)
        answers = {"GET": client.get(url)}
        if kwargs or short not in OWN_WORK:
            answers["POST"] = client.post(url, {"visibility": "everyone", "text": "x", "priority": "9",
                                                "name": f"{MARK}-recipe", "recipe": "x", "save": "1"})
        for method, resp in answers.items():
            seen.append((method, name))
            body = b"".join(resp.streaming_content) if resp.streaming else resp.content
            assert MARK.encode() not in body, f"{method} {url} showed Cy's {MARK}: {body[:300]!r}"
            if kwargs and short not in ("queue_pause", "queue_resume"):
                assert resp.status_code in (403, 404, 405), f"{method} {url}: {resp.status_code}"
            else:  # a page or action of one's own (store-wide ones: the next test)
                assert resp.status_code < 500, f"{method} {url}: {resp.status_code}"
    assert len(seen) > 60
    # Nothing of Cy's changed hands or state.
    things = cy_things
    assert Asset.objects.get(pk=things["asset"].pk).trashed_at is None
    assert Asset.objects.get(pk=things["asset"].pk).visibility == Visibility.PRIVATE
    recipe = Recipe.objects.get(pk=things["recipe"].pk)
    assert recipe.owner == things["recipe"].owner and MARK in recipe.text
    assert RecoveryPoint.objects.filter(pk=things["point"].pk).exists()
    assert Asset.objects.filter(trashed_at__isnull=False).count() == 0


@pytest.mark.django_db(transaction=True)
def test_store_wide_actions_are_for_admins(client, other_user, cy_things, user):
    client.force_login(other_user)
    for name, kwargs in [("assets:store_job", {"kind": "store_gc"}),
                         ("assets:store_job", {"kind": "store_verify"}),
                         ("assets:store_job", {"kind": "library_backup"}), ("assets:trash_empty", {}),
                         ("assets:recovery_point_create", {}), ("registry:scan", {}),
                         ("assets:recovery_point_restore", {"point_id": cy_things["point"].pk})]:
        before = Job.objects.count()
        resp = client.post(reverse(name, kwargs=kwargs), {"name": "x"})
        assert resp.status_code == 403, name
        assert Job.objects.count() == before
    client.force_login(user)  # the admin may
    resp = client.post(reverse("assets:store_job", kwargs={"kind": "store_verify"}))
    assert resp.status_code == 302


@pytest.mark.django_db(transaction=True)
def test_sharing_with_everyone_lets_others_read_but_not_change(client, other_user, third_user, cy_things):
    asset = cy_things["asset"]
    client.force_login(third_user)
    resp = client.post(reverse("assets:asset_visibility", args=[asset.name]), {"visibility": "everyone"})
    assert resp.status_code == 302
    client.force_login(other_user)
    page = client.get(reverse("assets:asset_detail", args=[asset.name]))
    assert page.status_code == 200 and 'share-form' not in page.content.decode()
    download = client.get(reverse("assets:version_download", args=[asset.name, 1]))
    assert download.status_code == 200 and MARK.encode() in b"".join(download.streaming_content)
    assert asset.name in client.get(reverse("assets:library")).content.decode()
    for name in ("asset_edit", "asset_trash", "asset_visibility"):
        assert client.post(reverse(f"assets:{name}", args=[asset.name]),
                           {"visibility": "private", "description": "mine"}).status_code == 403
    assert client.post(reverse("assets:version_restore", args=[asset.name, 1])).status_code == 403
    asset.refresh_from_db()
    assert asset.trashed_at is None and asset.description == "" and asset.visibility == "everyone"


@pytest.mark.django_db(transaction=True)
def test_sharing_with_a_group_reaches_its_members_only(client, other_user, third_user, cy_things):
    asset, job = cy_things["asset"], cy_things["job"]
    team = Group.objects.create(name="team")
    third_user.groups.add(team)
    client.force_login(third_user)
    # A group Cy is not in is refused (only admins may pick any group).
    outsiders = Group.objects.create(name="outsiders")
    resp = client.post(reverse("assets:asset_visibility", args=[asset.name]),
                       {"visibility": "group", "group": outsiders.pk}, follow=True)
    assert Asset.objects.get(pk=asset.pk).visibility == Visibility.PRIVATE
    resp = client.post(reverse("assets:asset_visibility", args=[asset.name]),
                       {"visibility": "group", "group": team.pk})
    assert resp.status_code == 302
    call_command("share", "job", str(job.pk), "group", "--group", "team", "--owner", third_user.username)
    client.force_login(other_user)
    assert client.get(reverse("assets:asset_detail", args=[asset.name])).status_code == 404
    assert client.get(reverse("monitoring:job_detail", args=[job.pk])).status_code == 404
    other_user.groups.add(team)
    assert client.get(reverse("assets:asset_detail", args=[asset.name])).status_code == 200
    assert client.get(reverse("monitoring:job_detail", args=[job.pk])).status_code == 200
    # Seeing a job is not steering it.
    assert client.post(reverse("monitoring:job_cancel", args=[job.pk])).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_name_another_user_owns_is_never_written_to(client, tmp_path, other_user, cy_things):
    asset, recipe = cy_things["asset"], cy_things["recipe"]
    Asset.objects.filter(pk=asset.pk).update(visibility=Visibility.EVERYONE)  # even when shared
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("bob's\n")
    with pytest.raises(CommandError, match="taken by an asset you cannot change"):
        call_command("import_asset", str(mine), "--kind", "other", "--name", asset.name, "--owner", "bob")
    assert Asset.objects.get(pk=asset.pk).head_number == 1
    client.force_login(other_user)
    resp = client.post(reverse("assembly:run"), {"recipe": "merge_method: linear\n", "name": recipe.name,
                                                  "save": "1"})
    assert resp.status_code == 409 and "taken by someone else" in resp.content.decode()
    recipe.refresh_from_db()
    assert recipe.owner.username == "cy" and MARK in recipe.text


@pytest.mark.django_db(transaction=True)
def test_a_recipe_cannot_reach_a_private_model_by_name(other_user, cy_things):
    from audobon_site.access import acting_as

    hidden = cy_things["model"].asset.name
    text = "merge_method: linear\nmodels:\n  - model: {m}\n    parameters: {{weight: 1.0}}\ndtype: float32\n"
    with acting_as(other_user):
        with pytest.raises(Exception) as hidden_err:
            assembly_services.recipe_plan(text.format(m=hidden), web=True)
        with pytest.raises(Exception) as missing_err:
            assembly_services.recipe_plan(text.format(m="no-such-model"), web=True)
    # The same answer as for a model that does not exist: nothing tells that it does.
    assert str(hidden_err.value).replace(hidden, "X") == str(missing_err.value).replace("no-such-model", "X")
    with acting_as(cy_things["model"].asset.owner):
        assert assembly_services.recipe_plan(text.format(m=hidden), web=True).method == "linear"


@pytest.mark.django_db(transaction=True)
def test_commands_act_for_the_only_admin_or_the_owner_given(tmp_path, django_user_model):
    src = tmp_path / "f"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    # A fresh home with no account: made by no one ...
    call_command("import_asset", str(src), "--kind", "other", "--name", "early")
    assert Asset.objects.get(name="early").owner is None
    # ... and the first admin takes it over.
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    assert Asset.objects.get(name="early").owner == admin
    call_command("import_asset", str(src), "--kind", "other", "--name", "second")
    assert Asset.objects.get(name="second").owner == admin
    bob = django_user_model.objects.create_user(username="bob", password="pw-bob-123456")
    call_command("import_asset", str(src), "--kind", "other", "--name", "bobs", "--owner", "bob")
    assert Asset.objects.get(name="bobs").owner == bob
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("import_asset", str(src), "--kind", "other", "--name", "x", "--owner", "nobody")
    django_user_model.objects.create_superuser(username="root2", password="pw-root-123456")
    with pytest.raises(CommandError, match="several admins"):
        call_command("import_asset", str(src), "--kind", "other", "--name", "y")
    assert not Asset.objects.filter(name__in=["x", "y"]).exists()
    assert Asset.objects.get(name="early").owner == admin  # the second admin takes nothing


@pytest.mark.django_db(transaction=True)
def test_default_visibility_is_private_and_an_admin_can_change_it(monkeypatch, tmp_path, user):
    src = tmp_path / "f"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    call_command("import_asset", str(src), "--kind", "other", "--name", "one")
    assert Asset.objects.get(name="one").visibility == Visibility.PRIVATE
    monkeypatch.setenv("AUDOBON_DEFAULT_VISIBILITY", "everyone")
    call_command("import_asset", str(src), "--kind", "other", "--name", "two")
    assert Asset.objects.get(name="two").visibility == Visibility.EVERYONE


@pytest.mark.django_db(transaction=True)
def test_jobs_and_runs_are_shared_from_their_pages(client, other_user, third_user, cy_things):
    job, run = cy_things["job"], cy_things["run"]
    client.force_login(other_user)
    assert client.get(reverse("training:run_detail", args=[run.pk])).status_code == 404
    assert client.post(reverse("monitoring:job_share", args=[job.pk]),
                       {"visibility": "everyone"}).status_code == 404
    client.force_login(third_user)
    page = client.get(reverse("monitoring:job_detail", args=[job.pk])).content.decode()
    assert "share-form" in page
    for url in (reverse("monitoring:job_share", args=[job.pk]), reverse("training:run_share", args=[run.pk])):
        assert client.post(url, {"visibility": "everyone"}).status_code == 302
    client.force_login(other_user)
    assert client.get(reverse("training:run_detail", args=[run.pk])).status_code == 200
    page = client.get(reverse("monitoring:job_detail", args=[job.pk]))
    assert page.status_code == 200 and "share-form" not in page.content.decode()
    assert client.post(reverse("training:run_resume", args=[run.pk])).status_code == 403
    resp = client.post(reverse("training:run_share", args=[run.pk]), {"visibility": "private"})
    assert resp.status_code == 403
    run.refresh_from_db()
    assert run.visibility == Visibility.EVERYONE


@pytest.mark.django_db(transaction=True)
def test_a_backup_keeps_who_sees_each_asset(tmp_path, third_user, cy_things):
    asset = cy_things["asset"]
    team = Group.objects.create(name="team")
    Asset.objects.filter(pk=asset.pk).update(visibility=Visibility.GROUP, group=team)
    Asset.objects.filter(pk=cy_things["dataset"].pk).update(visibility=Visibility.EVERYONE)
    # (the model is referenced in place outside the web's roots, which a restore refuses)
    Asset.objects.filter(pk=cy_things["model"].asset_id).delete()
    dest = tmp_path / "b1.tar"
    asset_services.library_backup(dest=dest)
    Asset.objects.all().delete()
    asset_services.library_restore(path=dest)
    restored = Asset.objects.get(pk=asset.pk)
    assert (restored.owner, restored.visibility, restored.group) == (third_user, Visibility.GROUP, team)
    assert Asset.objects.get(pk=cy_things["dataset"].pk).visibility == Visibility.EVERYONE
