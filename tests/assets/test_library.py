"""The library's services: versions, lineage, search, recovery points, backup, gc, uploads."""

import io
import json

import pytest

from apps.assets import search, selectors, services
from apps.assets.engine.errors import BlobMissingError
from apps.assets.engine.store import FileEntry
from apps.assets.models import Asset, AssetVersion, Upload
from apps.monitoring.models import Job

pytestmark = pytest.mark.django_db


def names(query, **kw):
    return sorted(a.name for a in selectors.library_search(query=query, **kw).assets)


def test_import_a_folder_makes_version_one_with_its_manifest_and_metadata(model_dir, user):
    v = services.asset_import(source=model_dir, kind="model", owner=user, tags=["Base", "tiny"])
    assert (v.asset.name, v.number, v.asset.head_number) == ("tiny-llama", 1, 1)
    assert sorted(v.manifest) == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
    assert v.manifest["tokenizer/vocab.txt"]["size"] == 6
    assert v.metadata["architecture"] == "llama" and v.metadata["files"] == 3
    assert sorted(t.name for t in v.asset.tags.all()) == ["base", "tiny"]
    for entry in v.manifest.values():
        assert services.blob_store().has(entry["sha256"])


def test_importing_the_same_content_twice_stores_one_blob_each(model_dir):
    services.asset_import(source=model_dir, kind="model")
    before = services.blob_store().usage()
    v2 = services.asset_import(source=model_dir, kind="model")
    assert v2.number == 2
    assert services.blob_store().usage() == before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "/no/such/folder", "kind": "model"}, "/no/such/folder: no such file or folder"),
    ({"kind": "model", "name": "../evil"}, "asset name '../evil' is not allowed"),
    ({"kind": "model", "tags": ["ok", "bad tag!"]}, "tag 'bad tag!' is not allowed"),
])
def test_bad_import_input_is_named_and_nothing_is_registered(model_dir, kwargs, message):
    kwargs.setdefault("source", model_dir)
    with pytest.raises(services.AssetInputError, match=message.replace("(", r"\(")):
        services.asset_import(**kwargs)
    assert Asset.objects.count() == 0 and AssetVersion.objects.count() == 0


def test_kind_of_an_existing_asset_cannot_change(model_dir):
    services.asset_import(source=model_dir, kind="model")
    with pytest.raises(services.AssetInputError, match="is a model, not a dataset"):
        services.asset_import(source=model_dir, kind="dataset")
    assert AssetVersion.objects.count() == 1


def test_a_version_never_points_at_a_missing_blob():
    with pytest.raises(BlobMissingError, match=r"a\.bin"):
        services.asset_version_create(name="ghost", kind="other",
                                      entries=[FileEntry(path="a.bin", sha256="0" * 64, size=1)])
    assert Asset.objects.count() == 0


def test_restore_makes_a_new_version_equal_to_the_old_one(model_dir):
    v1 = services.asset_import(source=model_dir, kind="model")
    (model_dir / "config.json").write_text('{"model_type": "mistral"}')
    v2 = services.asset_import(source=model_dir, kind="model")
    assert v2.manifest != v1.manifest
    v3 = services.asset_version_restore(version=v1)
    assert v3.number == 3 and v3.manifest == v1.manifest
    assert list(v3.parents.all()) == [v1]
    asset = Asset.objects.get()
    assert asset.head_number == 3 and asset.metadata["architecture"] == "llama"
    assert AssetVersion.objects.filter(asset=asset).count() == 3  # history kept


def test_version_refs():
    e = services.blob_store().ingest_stream([b"hello"])
    services.asset_version_create(name="note", kind="other",
                                  entries=[FileEntry("a.txt", e[0], e[1])])
    services.asset_version_create(name="note", kind="other",
                                  entries=[FileEntry("b.txt", e[0], e[1])])
    assert selectors.asset_version_get(ref="note").number == 2
    assert selectors.asset_version_get(ref="note@1").number == 1
    with pytest.raises(LookupError, match="has no version 7"):
        selectors.asset_version_get(ref="note@7")
    with pytest.raises(LookupError, match="no asset named 'nope'"):
        selectors.asset_version_get(ref="nope")


def _blob(data: bytes) -> FileEntry:
    sha, size = services.blob_store().ingest_stream([data])
    return FileEntry("data.bin", sha, size)


def test_search_words_filters_and_facets(user, other_user):
    a = services.asset_version_create(
        name="llama-chat-7b", kind="model", entries=[_blob(b"1")], owner=user,
        metadata={"architecture": "llama"}, tags=["chat", "base"], description="A chatty llama")
    services.asset_version_create(name="qwen-coder", kind="model", entries=[_blob(b"2")],
                                  owner=other_user, metadata={"architecture": "qwen2"}, tags=["code"])
    services.asset_version_create(name="alpaca-clean", kind="dataset", entries=[_blob(b"3")],
                                  owner=user, tags=["chat"], parents=[a],
                                  description="instructions for llama fine-tunes")
    assert names("llama") == ["alpaca-clean", "llama-chat-7b"]  # name and description
    assert names("chatx") == []
    assert names("chatt") == ["llama-chat-7b"]  # "chatty" in its description
    assert names("chat") == ["alpaca-clean", "llama-chat-7b"]  # tag text too
    assert names("lla kind:model") == ["llama-chat-7b"]        # prefix match
    assert names("tag:chat tag:base") == ["llama-chat-7b"]
    assert names("arch:QWEN2") == ["qwen-coder"]
    assert names("owner:me", user=user) == ["alpaca-clean", "llama-chat-7b"]
    assert names("owner:bob") == ["qwen-coder"]
    assert names("parent:llama-chat-7b") == ["alpaca-clean"]
    assert names("created:>2000-01-01 kind:dataset") == ["alpaca-clean"]
    assert names("created:<2000-01-01") == []
    page = selectors.library_search(query="")
    assert page.total == 3
    assert dict(page.kind_counts) == {"model": 2, "dataset": 1}
    assert dict(page.tag_counts) == {"chat": 2, "base": 1, "code": 1}
    bad = selectors.library_search(query="created:yesterday")
    assert bad.problems and "created:>2026-01-01" in bad.problems[0]


def test_search_follows_edits_and_the_trash():
    services.asset_version_create(name="thing", kind="other", entries=[_blob(b"x")])
    asset = Asset.objects.get()
    services.asset_update(asset=asset, tags=["shiny"], description="polished brass")
    assert names("brass tag:shiny") == ["thing"]
    services.asset_trash(asset=asset)
    assert names("brass") == []
    assert [a.name for a in selectors.library_search(query="brass", trashed=True).assets] == ["thing"]
    services.asset_untrash(asset=asset)
    assert names("brass") == ["thing"]
    services.asset_trash(asset=asset)
    assert services.trash_empty() == 1
    assert Asset.objects.count() == 0 and names("") == []


def test_parse_query_keeps_unknown_keys_as_words():
    parsed = search.parse_query('"two words" color:red kind:model')
    assert parsed.words == ["two", "words", "color", "red"]
    assert parsed.filters == [("kind", "model")]


def test_recovery_point_round_trip():
    services.asset_version_create(name="keep", kind="other", entries=[_blob(b"k1")])
    point = services.recovery_point_create(name="before experiments")
    services.asset_version_create(name="keep", kind="other", entries=[_blob(b"k2")])
    services.asset_version_create(name="scratch", kind="other", entries=[_blob(b"s")])
    result = services.recovery_point_restore(point=point)
    assert result == {"restored": ["keep"], "trashed": ["scratch"], "unchanged": 0}
    keep = Asset.objects.get(name="keep")
    head = keep.versions.get(number=keep.head_number)
    assert keep.head_number == 3 and head.manifest == keep.versions.get(number=1).manifest
    assert Asset.objects.get(name="scratch").trashed_at is not None
    with pytest.raises(services.AssetInputError, match="already exists"):
        services.recovery_point_create(name="before experiments")


def test_verify_names_corrupt_blobs_and_the_versions_using_them(model_dir):
    v = services.asset_import(source=model_dir, kind="model")
    report, affected = services.store_verify()
    assert report.ok and report.checked == 3
    path = services.blob_store().blob_path(v.manifest["config.json"]["sha256"])
    path.chmod(0o644)
    path.write_text('{"model_type": "tampered"}')
    report, affected = services.store_verify()
    assert report.corrupt == [v.manifest["config.json"]["sha256"]]
    assert affected == [{"version": "tiny-llama@1", "files": ["config.json"]}]


def test_gc_plans_then_frees_only_unreferenced_blobs(fresh_library):
    services.asset_version_create(name="kept", kind="other", entries=[_blob(b"kept")])
    services.asset_version_create(name="gone", kind="other", entries=[_blob(b"gone!")])
    services.asset_trash(asset=Asset.objects.get(name="gone"))
    assert services.store_gc()["blobs"] == 0  # the trash still holds it
    services.trash_empty()
    plan = services.store_gc()
    assert (plan["blobs"], plan["bytes"], plan["executed"]) == (1, 5, False)
    assert services.blob_store().usage() == (2, 9)
    running = Job.objects.create(kind="asset_import", queue="light", status=Job.Status.RUNNING)
    with pytest.raises(services.AssetInputError, match="an import or restore is running"):
        services.store_gc(execute=True)
    running.delete()
    assert services.store_gc(execute=True)["freed_bytes"] == 5
    assert services.blob_store().usage() == (1, 4)
    assert services.store_verify()[0].ok


def test_backup_restores_into_an_empty_library_identically(model_dir, tmp_path, settings, user):
    v1 = services.asset_import(source=model_dir, kind="model", owner=user, tags=["base"])
    child = services.asset_version_create(name="child", kind="model", entries=[_blob(b"c")],
                                          parents=[v1])
    services.recovery_point_create(name="rp")
    backup = services.library_backup(dest=tmp_path / "lib.tar")
    assert backup.verified and backup.blobs == 4
    manifests = {str(v.pk): v.manifest for v in AssetVersion.objects.all()}

    # Another machine: empty database, empty store.
    AssetVersion.objects.all().delete()
    Asset.objects.all().delete()
    from apps.assets.models import RecoveryPoint
    RecoveryPoint.objects.all().delete()
    settings.AUDOBON_HOME = tmp_path / "other"
    (settings.AUDOBON_HOME / "store").mkdir(parents=True)
    result = services.library_restore(path=tmp_path / "lib.tar")
    assert result == {"assets_added": 2, "versions_added": 2, "assets_in_backup": 2}
    assert {str(v.pk): v.manifest for v in AssetVersion.objects.all()} == manifests
    assert list(AssetVersion.objects.get(pk=child.pk).parents.all()) == [v1]
    assert Asset.objects.get(name="tiny-llama").owner == user
    assert services.store_verify()[0].ok
    assert names("tag:base") == ["tiny-llama"]
    # Again: nothing doubles.
    again = services.library_restore(path=tmp_path / "lib.tar")
    assert again["assets_added"] == 0 and again["versions_added"] == 0
    assert AssetVersion.objects.count() == 2


def test_restore_into_a_library_with_a_name_clash(tmp_path):
    services.asset_version_create(name="shared", kind="other", entries=[_blob(b"theirs")])
    services.library_backup(dest=tmp_path / "b.tar")
    Asset.objects.all().delete()
    services.asset_version_create(name="shared", kind="other", entries=[_blob(b"mine")])
    services.library_restore(path=tmp_path / "b.tar")
    assert sorted(Asset.objects.values_list("name", flat=True)) == ["shared", "shared (restored)"]


def test_restore_of_a_missing_file_is_named(tmp_path):
    with pytest.raises(services.AssetInputError, match=r"nothing\.tar: no such backup file"):
        services.library_restore(path=tmp_path / "nothing.tar")


def test_upload_resumes_after_a_cut_and_registers_only_when_complete(user):
    data = [b"first file contents", b"x" * 5000]
    up = services.upload_create(owner=user, name="bundle", kind="dataset",
                                files=[{"path": "a.txt", "size": len(data[0])},
                                       {"path": "dir/b.bin", "size": len(data[1])}])
    services.upload_chunk_write(upload=up, index=0, offset=0, stream=io.BytesIO(data[0]),
                                length=len(data[0]))
    # The connection drops 1000 bytes into a 3000-byte chunk.
    with pytest.raises(services.AssetInputError, match="cut off after 1000 of 3000 bytes; resume from 1000"):
        services.upload_chunk_write(upload=up, index=1, offset=0, stream=io.BytesIO(data[1][:1000]),
                                    length=3000)
    assert services.upload_received(up) == [len(data[0]), 1000]
    with pytest.raises(services.AssetInputError, match=r"not complete yet: dir/b\.bin"):
        services.upload_finish(upload=up)
    assert Asset.objects.count() == 0
    with pytest.raises(services.AssetInputError, match="resume from 1000"):
        services.upload_chunk_write(upload=up, index=1, offset=0, stream=io.BytesIO(data[1]),
                                    length=len(data[1]))
    services.upload_chunk_write(upload=up, index=1, offset=1000, stream=io.BytesIO(data[1][1000:]),
                                length=4000)
    job = services.upload_finish(upload=up)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    v = selectors.asset_version_get(ref="bundle")
    assert sorted(v.manifest) == ["a.txt", "dir/b.bin"] and v.job == job and v.asset.owner == user
    assert not Upload.objects.exists()


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", ""])
def test_upload_paths_must_be_plain(user, path):
    with pytest.raises(services.AssetInputError, match="not a plain relative path"):
        services.upload_create(owner=user, name="u", kind="other", files=[{"path": path, "size": 1}])


def test_import_job_kind_runs_through_the_spine(model_dir, user):
    from apps.monitoring.services import job_submit

    job = job_submit(kind="asset_import", owner=user,
                     spec={"source": str(model_dir), "kind": "model", "tags": ["t"]})
    job.refresh_from_db()
    assert job.status == "succeeded", job.traceback
    assert job.result["asset"] == "tiny-llama"
    assert AssetVersion.objects.get().job == job
    progress = job.events.filter(kind="progress").last()
    assert progress.data["done"] == progress.data["total"] > 0
    bad = job_submit(kind="asset_import", spec={"source": "/nope", "kind": "model"})
    bad.refresh_from_db()
    assert bad.status == "failed" and "/nope: no such file or folder" in bad.error


def test_tables_dump_is_json_with_lineage():
    a = services.asset_version_create(name="p", kind="other", entries=[_blob(b"p")])
    services.asset_version_create(name="c", kind="other", entries=[_blob(b"c")], parents=[a])
    tables = json.loads(services.library_tables_dump())
    by_asset = {v["asset"]: v for v in tables["versions"]}
    child = by_asset[str(Asset.objects.get(name="c").pk)]
    assert child["parents"] == [str(a.pk)]


def test_a_model_referenced_in_place_stays_where_it_is(model_dir, tmp_path, fresh_library):
    entries = [FileEntry(p.relative_to(model_dir).as_posix(), "", p.stat().st_size)
               for p in sorted(model_dir.rglob("*")) if p.is_file()]
    v = services.asset_version_create(name="in-place", kind="model", entries=entries,
                                      location=str(model_dir))
    assert services.blob_store().usage() == (0, 0)  # nothing copied
    assert services.version_file(v, "config.json") == model_dir / "config.json"
    services.asset_version_export(version=v, dest=tmp_path / "copy")
    assert (tmp_path / "copy" / "tokenizer" / "vocab.txt").read_text() == "a\nb\nc\n"
    assert services.store_verify()[1] == []
    (model_dir / "config.json").unlink()
    _, affected = services.store_verify()
    assert affected == [{"version": "in-place@1", "files": ["config.json"],
                         "location": str(model_dir)}]
    with pytest.raises(BlobMissingError, match="config"):
        services.asset_version_create(name="in-place", kind="model", entries=entries,
                                      location=str(model_dir))


def test_a_version_is_made_complete_with_its_spec_and_metadata(fresh_library, tmp_path):
    """Spec and metadata are given to the import, so no later write changes a registered
    version; the files' own description stays beside the added metadata."""
    from apps.assets import services as asset_services

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    v = asset_services.asset_import(source=folder, kind="other", name="complete",
                                    spec={"made_by": "a test"}, metadata={"score": 1.5})
    v.refresh_from_db()
    assert v.spec == {"made_by": "a test"}
    assert v.metadata["score"] == 1.5 and v.asset.metadata["score"] == 1.5
    assert len(v.metadata) > 1  # what the files show is kept too
