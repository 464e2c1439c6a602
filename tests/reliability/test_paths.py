"""The filesystem boundary: every entry point that takes a server path, a file path of a
model folder, or a row of a backup, probed the way a hostile logged-in user would.

The web reads only under AUDOBON_HOME and the import roots (here: one folder, `models`); a
refusal lists the roots and is the same whether or not the path exists. Registered model
folders expose model files only, links leaving a folder are refused at scan time and again at
request time, a changed in-place file answers with the reason, and a crafted backup is refused,
naming its table and row, before anything is written.
"""

from __future__ import annotations

import html
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from apps.assembly import services as assembly_services
from apps.assembly.engine.plan import PlanError
from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.engine.archive import backup_write
from apps.assets.models import Asset, AssetVersion, Backup
from apps.assets.roots import PathNotAllowedError, web_path_check
from apps.monitoring.models import Job, JobEvent
from apps.registry import services as registry_services
from apps.registry.models import DiscoveredModel
from tests.registry.zoo import llama_like

pytestmark = pytest.mark.django_db

SECRET = b"TOP-SECRET-PASSWORD-1234567890\n"


@pytest.fixture
def roots(settings, tmp_path, fresh_library):
    """One import root (`models`) with a model in it, and a folder outside every root."""
    models = tmp_path / "models"
    models.mkdir()
    settings.AUDOBON_IMPORT_ROOTS = [str(models)]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    llama_like(outside / "far-model")
    return models, outside


@pytest.fixture
def model_dir(tmp_path):
    d = llama_like(tmp_path / "tiny-llama")
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    return d


@pytest.fixture
def ada(client, user):
    client.force_login(user)
    return client


def _messages(resp) -> str:
    """The page's messages, unescaped (they quote paths with ')."""
    page = resp.content.decode()
    assert '<ul class="messages">' in page, page[:500]
    return html.unescape(page.split('<ul class="messages">', 1)[1].split("</ul>", 1)[0])


def _problems(resp) -> str:
    """The plan panel's problems, unescaped."""
    page = resp.content.decode()
    if 'id="plan-problems"' not in page:
        return ""
    return html.unescape(page.split('id="plan-problems"', 1)[1].split("</div>", 1)[0])


def _same_refusal(a: str, path_a: str, b: str, path_b: str) -> None:
    """Two refusals that differ only by the path they quote: nothing tells one from the other."""
    assert a.replace(path_a, "P") == b.replace(path_b, "P")


# --- the one helper -------------------------------------------------------------------------

def test_the_web_reads_only_under_the_roots(roots, tmp_path, settings):
    models, outside = roots
    assert web_path_check(str(models)) == models.resolve()
    (models / "inner").mkdir()
    assert web_path_check(str(models / "inner")) == (models / "inner").resolve()
    (models / "escape").symlink_to(outside)
    refused = {}
    for raw in (str(outside), str(outside / "secret.txt"), str(outside / "no-such-thing"), "/etc/passwd",
                str(models / ".." / "outside"), str(models / "escape"), str(models / "escape" / "secret.txt"),
                "relative/path", "~/x", str(models / ".hidden"),
                str(settings.AUDOBON_HOME), str(settings.AUDOBON_HOME / "db.sqlite3"),
                str(settings.AUDOBON_HOME / "secret_key"), str(settings.AUDOBON_HOME / "store"),
                str(settings.AUDOBON_HOME / "work"), str(settings.AUDOBON_HOME / "cache" / "versions")):
        with pytest.raises(PathNotAllowedError) as err:
            web_path_check(raw)
        assert str(models) in str(err.value)  # names the roots
        refused[raw] = str(err.value)
    _same_refusal(refused[str(outside / "secret.txt")], str(outside / "secret.txt"),
                  refused[str(outside / "no-such-thing")], str(outside / "no-such-thing"))
    (settings.AUDOBON_HOME / "demo").mkdir()
    assert web_path_check(str(settings.AUDOBON_HOME / "demo")) == (settings.AUDOBON_HOME / "demo").resolve()


# --- the scan form ----------------------------------------------------------------------------

def test_the_scan_form_refuses_folders_outside_the_roots_without_telling_they_exist(ada, roots):
    models, outside = roots
    answers = {}
    for raw in (str(outside), str(outside / "nothing-here"), str(models / ".." / "outside")):
        resp = ada.post(reverse("registry:scan"), {"path": raw}, follow=True)
        answers[raw] = _messages(resp)
        assert "not a path the web may read" in answers[raw] and str(models) in answers[raw]
    _same_refusal(answers[str(outside)], str(outside), answers[str(outside / "nothing-here")],
                  str(outside / "nothing-here"))
    assert not Job.objects.filter(kind="scan_models").exists()
    assert not DiscoveredModel.objects.exists()
    llama_like(models / "good")
    resp = ada.post(reverse("registry:scan"), {"path": str(models)})
    job = Job.objects.get(kind="scan_models")
    assert resp.status_code == 302 and job.status == "succeeded", job.error
    assert DiscoveredModel.objects.get(name="good").asset is not None


def test_a_model_folder_exposes_model_files_only(ada, roots):
    models, outside = roots
    folder = llama_like(models / "m")
    (folder / ".env").write_text("API_KEY=hunter2")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[remote]")
    (folder / "notes.txt").write_text("private notes")
    (folder / "run.sh").write_text("#!/bin/sh")
    (folder / "README.md").write_text("# m")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (folder / "passwd.txt").symlink_to(outside / "secret.txt")  # a link out, not a model file
    registry_services.scan_models(paths=[models])
    version = asset_selectors.asset_version_get(ref="m")
    assert sorted(version.manifest) == ["README.md", "config.json", "model.safetensors",
                                        "tokenizer/vocab.txt"]
    for path in (".env", ".git/config", "notes.txt", "passwd.txt", "../outside/secret.txt"):
        resp = ada.get(reverse("assets:file_raw", args=["m", version.number, path]))
        assert resp.status_code == 404
        assert SECRET not in b"".join(resp.streaming_content if resp.streaming else [resp.content])
    # Into the store: the same model files, never the dotfiles or the script.
    stored = registry_services.model_import(model=DiscoveredModel.objects.get(name="m"))
    assert sorted(stored.manifest) == sorted(version.manifest)


def test_a_model_file_linking_out_of_its_folder_is_refused_at_scan_time(roots):
    models, outside = roots
    folder = models / "linked"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").symlink_to(outside / "far-model" / "model.safetensors")
    result = registry_services.scan_models(paths=[models])
    dm = DiscoveredModel.objects.get(name="linked")
    assert dm.asset is None and "links leave the model folder" in dm.error
    assert [e["path"] for e in result["errors"]] == [str(folder)]
    assert not Asset.objects.filter(name="linked").exists()


def test_a_link_made_after_the_scan_is_refused_when_serving(ada, roots):
    models, outside = roots
    folder = llama_like(models / "m")
    registry_services.scan_models(paths=[models])
    version = asset_selectors.asset_version_get(ref="m")
    size = version.manifest["config.json"]["size"]
    target = outside / "same-size.json"
    target.write_bytes(SECRET[:1] * size)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(target)
    for url in (reverse("assets:file_raw", args=["m", 1, "config.json"]),
                reverse("assets:version_download", args=["m", 1])):
        resp = ada.get(url)
        assert resp.status_code == 404 and b"leaves the model folder" in resp.content
    preview = ada.get(reverse("assets:file_preview", args=["m", 1, "config.json"]))
    assert preview.status_code == 404
    with pytest.raises(asset_services.AssetInputError, match="leaves the model folder"):
        asset_services.asset_version_export(version=version, dest=models.parent / "export")
    assert not (models.parent / "export").exists()
    # Nor is it read as a model any more (a recipe, a fine-tune) until it is rescanned.
    with pytest.raises(registry_services.ModelRefError, match="links leave its folder"):
        registry_services.resolve_model("m")


def test_a_hub_cache_snapshot_is_served_through_its_blob_links(ada, roots, settings, tmp_path):
    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    model = llama_like(tmp_path / "tiny-src")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    import hashlib

    for name in ("config.json", "model.safetensors"):
        data = (model / name).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (blobs / sha).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", sha))
    settings.AUDOBON_IMPORT_ROOTS = [*settings.AUDOBON_IMPORT_ROOTS, str(hub)]
    registry_services.scan_models(paths=[hub])
    version = asset_selectors.asset_version_get(ref="org--tiny")
    assert sorted(version.manifest) == ["config.json", "model.safetensors"]
    resp = ada.get(reverse("assets:file_raw", args=["org--tiny", 1, "config.json"]))
    assert resp.status_code == 200
    assert b"".join(resp.streaming_content) == (model / "config.json").read_bytes()


def test_an_in_place_file_changed_since_the_scan_answers_with_the_reason(ada, roots):
    models, _ = roots
    folder = llama_like(models / "m")
    registry_services.scan_models(paths=[models])
    with (folder / "model.safetensors").open("ab") as fh:
        fh.write(b"\0" * 100)  # grown: a Content-Length promise that would never be kept
    for url in (reverse("assets:file_raw", args=["m", 1, "model.safetensors"]),
                reverse("assets:version_download", args=["m", 1])):
        resp = ada.get(url)
        assert resp.status_code == 409 and b"changed since the scan" in resp.content
        assert b"size" in resp.content
    # The same size, written later: the mtime says so.
    version = asset_selectors.asset_version_get(ref="m")
    later = version.created_at.timestamp() + 3600
    os.utime(folder / "config.json", (later, later))
    resp = ada.get(reverse("assets:file_raw", args=["m", 1, "config.json"]))
    assert resp.status_code == 409 and b"modified at" in resp.content
    _, affected = asset_services.store_verify()
    assert sorted(affected[0]["files"]) == ["config.json", "model.safetensors"]


def test_an_unchanged_in_place_download_still_works(ada, roots):
    models, _ = roots
    folder = llama_like(models / "m")
    registry_services.scan_models(paths=[models])
    resp = ada.get(reverse("assets:version_download", args=["m", 1]))
    assert resp.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(b"".join(resp.streaming_content))) as tar:
        member = tar.extractfile("m-v1/config.json")
        assert member.read() == (folder / "config.json").read_bytes()


def test_a_scan_skips_an_unreadable_entry_with_a_warning(ada, roots, monkeypatch):
    models, _ = roots
    llama_like(models / "a-good")
    llama_like(models / "z-good")
    (models / "loop").symlink_to(models / "loop")  # stat: ELOOP, even for root
    locked = models / "locked"
    locked.mkdir()
    llama_like(locked / "inside")
    inner = llama_like(models / "with-bad-file")
    (inner / "tokenizer.json").symlink_to(inner / "tokenizer.json")  # a loop inside a model

    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    resp = ada.post(reverse("registry:scan"), {"path": str(models)})
    assert resp.status_code == 302
    job = Job.objects.get(kind="scan_models")
    assert job.status == "succeeded" and not job.traceback, job.traceback
    names = set(DiscoveredModel.objects.values_list("name", flat=True))
    assert {"a-good", "z-good", "with-bad-file"} <= names
    warnings = " ".join(job.result["warnings"])
    assert "locked" in warnings and "tokenizer.json" in warnings
    logs = " ".join(e.data.get("msg", "") for e in JobEvent.objects.filter(job=job, kind="log"))
    assert "warning:" in logs and "locked" in logs


# --- the GGUF import form ----------------------------------------------------------------------

def test_the_gguf_form_refuses_paths_outside_the_roots(ada, roots):
    models, outside = roots
    (outside / "x.gguf").write_bytes(b"GGUF")
    answers = {}
    for raw in (str(outside / "x.gguf"), str(outside / "nothing.gguf"),
                str(models / ".." / "outside" / "x.gguf")):
        answers[raw] = _messages(ada.post(reverse("registry:import_gguf"), {"path": raw}, follow=True))
        assert "not a path the web may read" in answers[raw] and str(models) in answers[raw]
    _same_refusal(answers[str(outside / "x.gguf")], str(outside / "x.gguf"),
                  answers[str(outside / "nothing.gguf")], str(outside / "nothing.gguf"))
    inside = _messages(ada.post(reverse("registry:import_gguf"), {"path": str(models / "none.gguf")},
                                follow=True))
    assert "no such readable file" in inside
    assert not Job.objects.exists()


# --- recipes from the web ----------------------------------------------------------------------

def _recipe(a: str, b: str) -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {b}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")


def test_a_recipe_from_the_web_names_paths_under_the_roots_only(ada, roots):
    models, outside = roots
    llama_like(models / "a")
    llama_like(models / "b")
    ok = ada.post(reverse("assembly:plan"), {"recipe": _recipe(models / "a", models / "b")}).content.decode()
    assert 'id="plan-problems"' not in ok
    answers = {}
    for far in (outside / "far-model", outside / "no-such-model", Path("/etc")):
        body = _problems(ada.post(reverse("assembly:plan"), {"recipe": _recipe(models / "a", far)}))
        assert "not a path the web may read" in body and str(models) in body
        answers[str(far)] = body
    _same_refusal(answers[str(outside / "far-model")], str(outside / "far-model"),
                  answers[str(outside / "no-such-model")], str(outside / "no-such-model"))
    # A folder under a root whose weights link out of the roots.
    sneaky = models / "sneaky"
    sneaky.mkdir()
    (sneaky / "model.safetensors").symlink_to(outside / "far-model" / "model.safetensors")
    body = _problems(ada.post(reverse("assembly:plan"), {"recipe": _recipe(models / "a", sneaky)}))
    assert "links outside the folders the web may read" in body
    # Submitting is checked the same way, before anything is queued.
    resp = ada.post(reverse("assembly:run"), {"recipe": _recipe(models / "a", outside / "far-model"),
                                              "name": "stolen"})
    assert resp.status_code == 400 and not Job.objects.exists()
    # The command line keeps any path for the local user.
    plan = assembly_services.recipe_plan(_recipe(models / "a", outside / "far-model"))
    assert len(plan.models) == 2


def test_a_plan_error_never_quotes_bytes_of_a_file(ada, roots):
    models, _ = roots
    llama_like(models / "a")
    fake = models / "fake"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(SECRET)  # not a safetensors file
    first8 = str(int.from_bytes(SECRET[:8], "little"))
    page = ada.post(reverse("assembly:plan"), {"recipe": _recipe(models / "a", fake)}).content.decode()
    assert 'id="plan-problems"' in page and "cannot be read" in html.unescape(page)
    assert first8 not in page and "SECRET" not in page and "PASSWORD" not in page
    with pytest.raises(PlanError) as err:
        assembly_services.recipe_plan(_recipe(models / "a", fake), web=True)
    assert first8 not in str(err.value)
    # A validation dataset is a path like any other.
    llama_like(models / "b", seed=1)
    text = _recipe(models / "a", models / "b") + "validation:\n  dataset: /etc\n"
    body = _problems(ada.post(reverse("assembly:plan"), {"recipe": text}))
    assert "validation dataset" in body and "not a path the web may read" in body


def test_a_recipe_from_the_web_still_names_library_models(ada, roots):
    models, _ = roots
    llama_like(models / "base-one")
    llama_like(models / "base-two", seed=3)
    registry_services.scan_models(paths=[models])
    text = _recipe("base-one", "asset:base-two@1")
    body = ada.post(reverse("assembly:plan"), {"recipe": text}).content.decode()
    assert 'id="plan-problems"' not in body


# --- backups from the web ------------------------------------------------------------------------

def test_a_web_backup_goes_to_the_backups_folder_under_a_plain_name(ada, roots, settings, tmp_path):
    for bad in ("../evil", "/tmp/evil.tar", "sub/dir.tar", ".hidden", "a..b", ""):
        resp = ada.post(reverse("assets:store_job", args=["library_backup"]), {"name": bad}, follow=True)
        assert resp.status_code == 200
    # An old-style path sent by a browser is not a name: nothing is written anywhere.
    ada.post(reverse("assets:store_job", args=["library_backup"]), {"dest": str(tmp_path / "b.tar")})
    assert not Job.objects.filter(kind="library_backup").exists()
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "evil.tar").exists()
    resp = ada.post(reverse("assets:store_job", args=["library_backup"]), {"name": "nightly"})
    job = Job.objects.get(kind="library_backup")
    assert resp.status_code == 302 and job.status == "succeeded", job.error
    assert (settings.AUDOBON_HOME / "backups" / "nightly.tar").is_file()
    assert Backup.objects.get().path == str(settings.AUDOBON_HOME / "backups" / "nightly.tar")


# --- restore: every row checked before anything is written --------------------------------------

def _crafted_backup(tmp_path, edit, *, name="crafted.tar"):
    """A backup of the current library whose tables went through `edit` first."""
    tables = json.loads(asset_services.library_tables_dump())
    edit(tables)
    shas = sorted(asset_services.referenced_blobs())
    dest = tmp_path / name
    backup_write(dest, store=asset_services.blob_store(), shas=shas,
                 tables=json.dumps(tables).encode(), meta={})
    return dest


def _library(model_dir):
    stored = asset_services.asset_import(source=model_dir, kind="model", name="stored")
    return stored


def _set(field, value, *, table="versions", row=0):
    def edit(tables):
        tables[table][row][field] = value
    return edit


def _manifest_path(path):
    def edit(tables):
        manifest = tables["versions"][0]["manifest"]
        manifest[path] = manifest.pop(sorted(manifest)[0])
    return edit


def _manifest_sha(sha):
    def edit(tables):
        manifest = tables["versions"][0]["manifest"]
        manifest[sorted(manifest)[0]]["sha256"] = sha
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (lambda o: _set("location", str(o)), "location: .* is not a path the web may read"),
    (lambda o: _set("location", "/etc"), "location: .* is not a path the web may read"),
    (lambda o: _set("location", "relative/folder"), "location"),
    (lambda o: _manifest_path("../../outside/x"), r"has a '\.\.' part"),
    (lambda o: _manifest_path("/etc/passwd"), "absolute"),
    (lambda o: _manifest_path(".env"), "dotfile"),
    (lambda o: _manifest_path("sub/.ssh/id_rsa"), "dotfile"),
    (lambda o: _manifest_sha("abc"), "is not 64 lowercase hex digits"),
    (lambda o: _manifest_sha("A" * 64), "is not 64 lowercase hex digits"),
    (lambda o: _manifest_sha("0" * 64), "neither in the backup nor in this store"),
    (lambda o: _set("kind", "weights", table="assets"), "kind 'weights'"),
    (lambda o: _set("name", "a/b", table="assets"), "not an allowed name"),
    (lambda o: _set("id", "not-a-uuid"), "is not a UUID"),
    (lambda o: _set("number", -1), "not a positive integer"),
])
def test_a_crafted_backup_is_refused_naming_table_and_row(roots, model_dir, tmp_path, settings, edit,
                                                          message):
    _, outside = roots
    _library(model_dir)
    path = _crafted_backup(tmp_path, edit(outside))
    # Another library: empty database, empty store.
    AssetVersion.objects.all().delete()
    Asset.objects.all().delete()
    settings.AUDOBON_HOME = tmp_path / "other"
    (settings.AUDOBON_HOME / "store").mkdir(parents=True)
    with pytest.raises(asset_services.AssetInputError, match=message) as err:
        asset_services.library_restore(path=path)
    assert "backup table" in str(err.value) and "row 1" in str(err.value)
    assert not Asset.objects.exists() and not AssetVersion.objects.exists()
    assert asset_services.blob_store().usage() == (0, 0)  # not one blob written
    assert not Backup.objects.filter(direction="restore").exists()
    with pytest.raises(CommandError, match="backup table"):
        call_command("restore", str(path), stdout=io.StringIO(), stderr=io.StringIO())


def test_a_restored_in_place_location_under_the_roots_is_accepted(roots, tmp_path, settings):
    models, _ = roots
    llama_like(models / "m")
    registry_services.scan_models(paths=[models])
    path = _crafted_backup(tmp_path, lambda tables: None)
    AssetVersion.objects.all().delete()
    Asset.objects.all().delete()
    result = asset_services.library_restore(path=path)
    assert result["versions_added"] == 1
    assert asset_selectors.asset_version_get(ref="m").location == str(models / "m")
    # And the library backs up again.
    asset_services.library_backup(dest=tmp_path / "again.tar")


def test_legacy_rows_neither_break_backups_nor_answer_500(ada, roots, model_dir, tmp_path, settings):
    """Rows let in before the checks (a dotfile, a malformed hash): the file views answer with
    the reason, every later backup is still written, and it restores without them."""
    stored = _library(model_dir)
    manifest = dict(stored.manifest)
    manifest[".gitattributes"] = dict(manifest["config.json"])
    AssetVersion.objects.filter(pk=stored.pk).update(manifest=manifest)
    poisoned = asset_services.asset_version_create(name="poisoned", kind="other",
                                                   entries=[asset_services.version_entries(stored)[0]])
    AssetVersion.objects.filter(pk=poisoned.pk).update(
        manifest={"config.json": {"sha256": "abc", "size": 1}})
    for url in (reverse("assets:file_raw", args=["poisoned", 1, "config.json"]),
                reverse("assets:version_download", args=["poisoned", 1])):
        resp = ada.get(url)
        assert resp.status_code == 409 and b"sha256" in resp.content
    backup = asset_services.library_backup(dest=tmp_path / "legacy.tar")
    assert backup.verified
    tables = json.loads(asset_services.library_tables_dump())
    rows = {r["id"]: r for r in tables["versions"]}
    assert rows[str(stored.pk)]["dropped_files"] == [".gitattributes"]
    assert rows[str(poisoned.pk)]["dropped_files"] == ["config.json"]
    AssetVersion.objects.all().delete()
    Asset.objects.all().delete()
    settings.AUDOBON_HOME = tmp_path / "other"
    (settings.AUDOBON_HOME / "store").mkdir(parents=True)
    result = asset_services.library_restore(path=tmp_path / "legacy.tar")
    assert result["versions_added"] == 2
    assert ".gitattributes" not in AssetVersion.objects.get(pk=stored.pk).manifest
    assert AssetVersion.objects.get(pk=poisoned.pk).manifest == {}


# --- export_asset --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../escaped.txt", "/tmp/abs.txt", "a/../../escaped.txt"])
def test_export_never_writes_outside_its_destination(roots, model_dir, tmp_path, bad):
    models, _ = roots
    stored = _library(model_dir)
    llama_like(models / "m")
    registry_services.scan_models(paths=[models])
    in_place = asset_selectors.asset_version_get(ref="m")
    dest_root = tmp_path / "exports"
    dest_root.mkdir()
    for version in (stored, in_place):
        manifest = dict(version.manifest)
        manifest[bad] = manifest.pop(sorted(manifest)[0])
        AssetVersion.objects.filter(pk=version.pk).update(manifest=manifest)  # a legacy row
        version.refresh_from_db()
        with pytest.raises(asset_services.AssetInputError):
            asset_services.asset_version_export(version=version, dest=dest_root / "out")
        with pytest.raises(CommandError):
            call_command("export_asset", f"{version.asset.name}@{version.number}",
                         str(dest_root / "cmd-out"), stdout=io.StringIO(), stderr=io.StringIO())
        assert sorted(p.name for p in dest_root.iterdir()) == []
        assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/abs.txt").exists()


# --- uploads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [".env", "sub/.ssh/id_rsa", "../up", "/abs"])
def test_an_upload_may_not_name_a_dotfile_or_leave_its_folder(user, bad):
    with pytest.raises(asset_services.AssetInputError, match="not a plain relative path"):
        asset_services.upload_create(owner=user, name="x", kind="other", files=[{"path": bad, "size": 1}])
