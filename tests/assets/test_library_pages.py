"""The library pages: search as you type, asset page, previews, download, restore, upload."""

import io
import json
import tarfile

import pytest
from django.urls import reverse
from PIL import Image

from apps.assets import services
from apps.assets.models import Asset

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def dataset_dir(tmp_path):
    d = tmp_path / "chat-set"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"})
                                             for i in range(30)))
    (d / "README.md").write_text("# Chat set\n" + "words " * 400)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(30)], "score": list(range(30))}),
                   d / "scores.parquet")
    img = Image.new("RGB", (800, 600), (200, 30, 30))
    img.save(d / "cover.png")
    return d


def test_library_search_as_you_type_returns_the_results_partial(ada, model_dir):
    services.asset_import(source=model_dir, kind="model", tags=["base"])
    page = ada.get(reverse("assets:library")).content.decode()
    assert 'hx-trigger="input changed delay:200ms, search"' in page and "tiny-llama" in page
    part = ada.get(reverse("assets:library"), {"q": "tiny kind:model"}, HTTP_HX_REQUEST="true")
    body = part.content.decode()
    assert body.lstrip().startswith('<div id="library-results"') and "tiny-llama" in body
    assert ">1 asset<" in body
    none = ada.get(reverse("assets:library"), {"q": "kind:dataset"}, HTTP_HX_REQUEST="true")
    assert "tiny-llama" not in none.content.decode()


def test_asset_page_shows_versions_files_lineage_and_model_summary(ada, model_dir):
    v1 = services.asset_import(source=model_dir, kind="model")
    services.asset_version_create(name="tuned", kind="model", entries=[
        services.blob_store().ingest_tree(model_dir / "config.json")[0]], parents=[v1])
    body = ada.get(reverse("assets:asset_detail", args=["tiny-llama"])).content.decode()
    assert "tokenizer/vocab.txt" in body and "version 1 of 1" in body
    assert '<svg class="lineage"' in body and "tuned@1" in body  # descendant drawn below
    assert "/library/a/tuned/?v=1" in body                        # and clickable
    assert "<dt>model_type</dt><dd>llama</dd>" in body


def test_previews_of_text_dataset_and_image(ada, dataset_dir):
    services.asset_import(source=dataset_dir, kind="dataset")
    url = lambda p: reverse("assets:file_preview", args=["chat-set", 1, p])  # noqa: E731
    rows = ada.get(url("train.jsonl")).content.decode()
    assert "<th>instruction</th>" in rows and "<td>q19</td>" in rows and "<td>q20</td>" not in rows
    parquet = ada.get(url("scores.parquet")).content.decode()
    assert "<th>prompt</th>" in parquet and "<td>p19</td>" in parquet and "<td>p20</td>" not in parquet
    text = ada.get(url("README.md")).content.decode()
    assert "# Chat set" in text and "the first KB" in text
    img = ada.get(url("cover.png")).content.decode()
    thumb_url = img.split('src="', 1)[1].split('"', 1)[0]
    thumb = ada.get(thumb_url)
    assert thumb["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(b"".join(thumb.streaming_content))).size == (256, 192)
    assert ada.get(url("missing.txt")).status_code == 404


def test_download_streams_the_version_as_a_tar(ada, model_dir):
    services.asset_import(source=model_dir, kind="model")
    resp = ada.get(reverse("assets:version_download", args=["tiny-llama", 1]))
    assert resp["Content-Disposition"] == 'attachment; filename="tiny-llama-v1.tar"'
    with tarfile.open(fileobj=io.BytesIO(b"".join(resp.streaming_content))) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert members["tiny-llama-v1/tokenizer/vocab.txt"] == b"a\nb\nc\n"
    assert members["tiny-llama-v1/config.json"] == (model_dir / "config.json").read_bytes()


def test_restore_button_and_edit_form(ada, model_dir):
    services.asset_import(source=model_dir, kind="model")
    (model_dir / "extra.txt").write_text("new")
    services.asset_import(source=model_dir, kind="model")
    resp = ada.post(reverse("assets:version_restore", args=["tiny-llama", 1]))
    assert resp.status_code == 302 and resp["Location"].endswith("?v=3")
    assert "extra.txt" not in Asset.objects.get().versions.get(number=3).manifest
    ada.post(reverse("assets:asset_edit", args=["tiny-llama"]),
             {"tags": "a, b", "category": "llm", "description": "d"})
    asset = Asset.objects.get()
    assert sorted(t.name for t in asset.tags.all()) == ["a", "b"] and asset.category == "llm"
    bad = ada.post(reverse("assets:asset_edit", args=["tiny-llama"]), {"tags": "no way!"}, follow=True)
    assert "tag &#x27;no way!&#x27; is not allowed" in bad.content.decode()


def test_upload_endpoints_chunked_with_resume(ada):
    payload = bytes(range(256)) * 100
    create = ada.post(reverse("assets:upload_create"), json.dumps(
        {"name": "blob-set", "kind": "dataset", "files": [{"path": "d/x.bin", "size": len(payload)}]}),
        content_type="application/json")
    assert create.status_code == 201
    up = create.json()
    chunk = lambda off, data: ada.put(  # noqa: E731
        reverse("assets:upload_chunk", args=[up["id"], 0]) + f"?offset={off}", data,
        content_type="application/octet-stream")
    assert chunk(0, payload[:10000]).json() == {"received": 10000}
    wrong = chunk(0, payload[:10000])
    assert wrong.status_code == 409 and "resume from 10000" in wrong.json()["error"]
    state = ada.get(reverse("assets:upload_state", args=[up["id"]])).json()
    assert state["files"][0]["received"] == 10000
    early = ada.post(reverse("assets:upload_finish", args=[up["id"]]))
    assert early.status_code == 409 and Asset.objects.count() == 0
    assert chunk(10000, payload[10000:]).json() == {"received": len(payload)}
    done = ada.post(reverse("assets:upload_finish", args=[up["id"]])).json()
    assert done["job_url"] == f"/jobs/{done['job']}/"
    assert Asset.objects.get().name == "blob-set"


def test_upload_rejects_bad_paths(ada):
    resp = ada.post(reverse("assets:upload_create"), json.dumps(
        {"name": "x", "kind": "other", "files": [{"path": "../up", "size": 1}]}),
        content_type="application/json")
    assert resp.status_code == 400 and "not a plain relative path" in resp.json()["error"]


def test_storage_page_and_jobs(ada, model_dir, tmp_path, fresh_library):
    services.asset_import(source=model_dir, kind="model")
    body = ada.get(reverse("assets:storage")).content.decode()
    assert "3 blobs" in body and "tiny-llama" in body
    resp = ada.post(reverse("assets:store_job", args=["store_verify"]))
    assert resp.status_code == 302
    resp = ada.post(reverse("assets:store_job", args=["library_backup"]), {"name": "b"})
    assert (fresh_library / "backups" / "b.tar").is_file()  # a name, never a path from the browser
    assert ada.post(reverse("assets:recovery_point_create"), {"name": "rp1"}).status_code == 302
