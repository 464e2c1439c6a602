"""The storage page's report: usage by kind, asset and owner (blobs counted once), per-user
quotas, cleanup suggestions, and the caches with `audobon cache stats|clear`."""

import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from apps.assets import services, storage_report
from apps.assets.models import Asset, AssetVersion
from apps.monitoring.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def library(fresh_library, model_dir, user, other_user):
    """ada's model (3 files) and bob's asset holding one of the same files and one of its own."""
    ada_v = services.asset_import(source=model_dir, kind="model", owner=user)
    extra = model_dir.parent / "notes"
    extra.mkdir()
    (extra / "notes.txt").write_text("bob's notes " * 100)
    shared = services.blob_store().ingest_tree(model_dir / "config.json")[0]
    own = services.blob_store().ingest_tree(extra / "notes.txt")[0]
    bob_v = services.asset_version_create(name="bob-notes", kind="other", entries=[shared, own],
                                          owner=other_user)
    return ada_v, bob_v, shared, own


def test_usage_counts_each_blob_once_by_kind_asset_and_owner(library, user, other_user):
    ada_v, _bob_v, shared, own = library
    usage = storage_report.usage_compute()
    assert usage.total == ada_v.size_bytes + own.size  # the shared config counted once
    assert usage.by_owner == {user.pk: ada_v.size_bytes, other_user.pk: shared.size + own.size}
    assert usage.by_kind == {"model": ada_v.size_bytes, "other": shared.size + own.size}
    report = storage_report.storage_report()
    assert [a["name"] for a in report["by_asset"]] == ["tiny-llama", "bob-notes"]
    assert {o["owner"]: o["bytes"] for o in report["by_owner"]} == {"ada": ada_v.size_bytes,
                                                                   "bob": shared.size + own.size}
    # a second version of the same files takes no more room
    services.asset_version_create(name="bob-notes", kind="other", entries=[shared, own], owner=other_user)
    assert storage_report.usage_compute().by_owner[other_user.pk] == shared.size + own.size
    # someone who is not an admin sees their own assets and row only
    mine = storage_report.storage_report(user=other_user)
    assert [a["name"] for a in mine["by_asset"]] == ["bob-notes"] and len(mine["by_owner"]) == 1


def test_a_version_over_the_owners_quota_is_refused_naming_owner_usage_and_quota(
        library, other_user, monkeypatch, model_dir):
    _, _bob_v, shared, own = library
    used = shared.size + own.size
    monkeypatch.setenv("AUDOBON_QUOTA_BYTES", str(used + 10))
    big = model_dir.parent / "big.bin"
    big.write_bytes(b"z" * 5000)
    entry = services.blob_store().ingest_tree(big)[0]
    with pytest.raises(services.QuotaExceededError) as exc:
        services.asset_version_create(name="bob-big", kind="other", entries=[entry], owner=other_user)
    msg = str(exc.value)
    assert "bob" in msg and f"({used} bytes)" in msg and f"({used + 10} bytes) quota" in msg
    assert "adds 5.0 KB (5000 bytes)" in msg
    assert not Asset.objects.filter(name="bob-big").exists()  # nothing registered
    with pytest.raises(services.QuotaExceededError):  # nor as a new version of an asset bob owns
        services.asset_version_create(name="bob-notes", kind="other", entries=[entry], owner=other_user)
    assert AssetVersion.objects.filter(asset__name="bob-notes").count() == 1
    # files bob already holds add nothing: still allowed; and no quota at all when unset
    services.asset_version_create(name="bob-again", kind="other", entries=[shared], owner=other_user)
    monkeypatch.delenv("AUDOBON_QUOTA_BYTES")
    services.asset_version_create(name="bob-big", kind="other", entries=[entry], owner=other_user)
    monkeypatch.setenv("AUDOBON_QUOTA_BYTES", "lots")
    with pytest.raises(ValueError, match="AUDOBON_QUOTA_BYTES"):
        services.asset_version_create(name="bob-more", kind="other", entries=[entry], owner=other_user)


def test_the_page_shows_usage_quota_caches_and_cleanup_with_admin_only_actions(
        library, client, user, other_user, monkeypatch):
    monkeypatch.setenv("AUDOBON_QUOTA_BYTES", str(10**6))
    client.force_login(user)
    body = client.get(reverse("assets:storage")).content.decode()
    for text in ("Usage", "By owner", "Cleanup suggestions", "Caches", "Model cache (heavy workers)",
                 "audobon runs prune --execute", "audobon gc --execute", "bob-notes", "<meter"):
        assert text in body, text
    assert reverse("assets:cache_clear", args=["thumbs"]) in body
    client.force_login(other_user)
    body = client.get(reverse("assets:storage")).content.decode()
    assert "bob-notes" in body and "tiny-llama" not in body and "Cleanup suggestions" not in body
    assert reverse("assets:cache_clear", args=["thumbs"]) not in body
    assert client.post(reverse("assets:cache_clear", args=["assembly"])).status_code == 403
    assert client.post(reverse("assets:storage_cleanup", args=["trash"])).status_code == 403
    client.force_login(user)
    assert client.get(reverse("assets:cache_clear", args=["assembly"])).status_code == 405
    assert client.post(reverse("assets:cache_clear", args=["nope"])).status_code == 404


def test_stale_thumbnails_are_found_and_only_they_are_freed(library, fresh_library, client, user, model_dir):
    from PIL import Image

    pic = model_dir.parent / "pics"
    pic.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(pic / "cover.png")
    version = services.asset_import(source=pic, kind="image", owner=user)
    sha = version.manifest["cover.png"]["sha256"]
    thumbs = fresh_library / "cache" / "thumbs"
    thumbs.mkdir(parents=True)
    (thumbs / f"{sha}-256.png").write_bytes(b"p" * 100)
    (thumbs / f"{'0' * 64}-256.png").write_bytes(b"s" * 70)  # its image is in no version
    [row] = [c for c in storage_report.cleanup_suggestions() if c["name"] == "thumbs"]
    assert (row["count"], row["bytes"]) == (1, 70)
    client.force_login(user)
    assert client.post(reverse("assets:storage_cleanup", args=["thumbs"])).status_code == 302
    assert sorted(p.name for p in thumbs.iterdir()) == [f"{sha}-256.png"]
    # the image's asset gone for good: its thumbnail is stale too; `cache clear thumbs` takes all
    Asset.objects.filter(pk=version.asset_id).delete()
    assert storage_report.thumbs_scan()["stale_bytes"] == 100
    call_command("cache", "clear", "thumbs")
    assert list(thumbs.iterdir()) == []


def test_trash_and_unreferenced_blob_suggestions_say_what_they_free(library, client, user):
    ada_v, _bob_v, shared, _own = library
    services.asset_trash(asset=ada_v.asset)
    sugg = {c["name"]: c for c in storage_report.cleanup_suggestions()}
    assert sugg["trash"]["bytes"] == ada_v.size_bytes - shared.size  # bob still holds the config
    assert sugg["blobs"]["bytes"] == 0
    client.force_login(user)
    resp = client.post(reverse("assets:storage_cleanup", args=["trash"]))
    assert resp.status_code == 302 and "/jobs/" in resp["Location"]  # the gc job that frees them
    assert not Asset.objects.filter(pk=ada_v.asset_id).exists()
    job = Job.objects.get(pk=int(resp["Location"].rstrip("/").rsplit("/", 1)[1]))
    assert job.kind == "store_gc" and job.status == Job.Status.SUCCEEDED  # ran inline in tests
    assert job.result["freed_bytes"] == ada_v.size_bytes - shared.size
    store = services.blob_store()
    assert store.has(shared.sha256) and not store.has(ada_v.manifest["model.safetensors"]["sha256"])
    sugg = {c["name"]: c for c in storage_report.cleanup_suggestions()}
    assert sugg["blobs"]["bytes"] == 0 and sugg["trash"]["count"] == 0


def test_cache_stats_and_clearing_the_assembly_and_hash_caches(library, capsys):
    ada_v, *_ = library
    made = services.asset_version_create(name="merged", kind="model", entries=services.version_entries(ada_v),
                                         spec={"cache_key": "k1", "recipe": "r"})
    call_command("cache", "stats", "--json")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["caches"]}
    assert set(rows) == {"models", "assembly", "thumbs", "hashes"}
    assert rows["assembly"]["entries"] == 1 and rows["hashes"]["entries"] >= 3
    assert rows["models"]["workers"] == [] and rows["models"]["hit_rate"] is None
    call_command("cache", "clear", "assembly")
    made.refresh_from_db()
    assert made.spec == {"cache_key": "k1", "recipe": "r"}  # the version stays as it was (immutable) ...
    assert not storage_report.assembly_cached().filter(pk=made.pk).exists()  # ... and is not reused
    call_command("cache", "clear", "hashes", "--json")
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["cleared"][0]["entries"] >= 3
    call_command("cache", "stats", "--json")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["caches"]}
    assert rows["assembly"]["entries"] == 0 and rows["hashes"]["entries"] == 0
