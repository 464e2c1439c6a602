"""Dataset pages with Django's test client: upload, the mapping step (preview re-rendered
on change), the import job, the dataset page with its token statistics and chat preview,
and hostile input answered with a message, never a 500."""

import json
import re
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.assets.models import Asset
from apps.registry.engine.demo_models import make_llama_family
from apps.training import selectors
from apps.training.services import dataset as services

pytestmark = pytest.mark.django_db

CSV = (b"question,answer,topic\nWhat is JSON?,A data format.,json\n"
       b"What is CSV?,Comma separated values.,csv\n"
       b"What is a list?,A sequence.,python\nWhat is a dict?,A mapping.,python\n")


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    make_llama_family(root)
    return root


@pytest.fixture
def registered(fresh_library, family_root):
    from apps.registry import services as registry_services

    registry_services.scan_models(paths=[family_root])
    return "demo-llama-base"


@pytest.fixture
def client_in(client, user):
    client.force_login(user)
    return client


def upload(client, name="qa.csv", content=CSV):
    return client.post(reverse("training:dataset_upload"), {"file": SimpleUploadedFile(name, content)})


def test_pages_need_a_login(client, fresh_library):
    for url in (reverse("training:dataset_list"), reverse("training:dataset_detail", args=["x"])):
        assert client.get(url).status_code == 302


def test_upload_map_preview_and_import(client_in, fresh_library, user):
    page = client_in.get(reverse("training:dataset_list"))
    assert page.status_code == 200 and b'enctype="multipart/form-data"' in page.content
    response = upload(client_in)
    assert response.status_code == 302
    url = response["Location"]
    token = re.search(r"/datasets/import/([0-9a-f-]{36})/", url).group(1).replace("-", "")
    staged = fresh_library / "work" / "dataset-uploads" / token
    assert (staged / "source.csv").read_bytes() == CSV

    page = client_in.get(url)
    text = page.content.decode()
    assert page.status_code == 200
    assert "Detected format: <strong>none</strong>" in text and "cannot tell the format" in text
    assert 'value="qa"' in text and "What is JSON?" in text  # default name, first rows

    # The mapping changed: htmx asks for the preview alone.
    params = {"name": "qa", "format": "", "map_0": "instruction", "map_1": "output", "map_2": "",
              "seed": "0", "validation_fraction": "0.25", "labels": ""}
    partial = client_in.post(url, {**params, "preview": "1"}, HTTP_HX_REQUEST="true")
    body = partial.content.decode()
    assert partial.status_code == 200 and "<h1>" not in body and 'id="import-preview"' in body
    assert "Detected format: <strong>alpaca</strong>" in body
    assert "&quot;role&quot;: &quot;assistant&quot;" in body

    assert not Asset.objects.exists()  # previewing imports nothing
    without_js = client_in.post(url, {**params, "preview": "1"}).content.decode()
    assert "<h1>" in without_js and "Detected format: <strong>alpaca</strong>" in without_js
    done = client_in.post(url, params)
    assert done.status_code == 302 and "/jobs/" in done["Location"]
    version = selectors.dataset_head(name="qa")
    card = version.metadata["dataset"]
    assert (card["format"], card["rows"], card["source"]["name"]) == \
        ("alpaca", {"train": 3, "validation": 1}, "qa.csv")
    assert version.created_by == user and version.asset.owner == user
    assert not staged.exists()  # imported: the staged copy is gone
    assert client_in.get(url).status_code == 404


def test_failed_import_keeps_the_upload_and_names_rows(client_in, fresh_library):
    url = upload(client_in, "bad.jsonl", b'{"text": "fine"}\n{"text": ""}\n{oops\n')["Location"]
    page = client_in.get(url)
    assert page.status_code == 200  # a malformed line shows in the preview, no 500
    assert "(invalid JSON)" in page.content.decode()
    done = client_in.post(url, {"name": "bad", "format": "", "map_0": "", "seed": "0",
                                "validation_fraction": "0.1", "labels": ""})
    job_page = client_in.get(done["Location"])
    assert b"line 3: not valid JSON" in job_page.content
    assert not Asset.objects.exists()
    assert client_in.get(url).status_code == 200  # kept: the mapping can change and be retried
    assert b"line 3: not valid JSON" in client_in.get(reverse("training:dataset_list")).content


def test_form_errors_and_duplicate_mapping(client_in, fresh_library):
    url = upload(client_in)["Location"]
    response = client_in.post(url, {"name": "", "map_0": "text", "map_1": "text", "seed": "-1",
                                    "validation_fraction": "2"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "Two columns are mapped to the same field." in text
    assert not Asset.objects.exists()


def test_hostile_uploads(client_in, fresh_library, other_user, client, monkeypatch):
    response = upload(client_in, "../../../etc/evil.csv")
    assert response.status_code == 302  # the browser's name picks nothing but the suffix
    uploads = fresh_library / "work" / "dataset-uploads"
    assert sorted(p.name for p in next(uploads.iterdir()).iterdir()) == ["source.csv", "upload.json"]
    assert b"evil" in client_in.get(response["Location"]).content  # shown as the name, nothing more

    refused = upload(client_in, "model.pkl", b"\x80\x04")
    assert refused.status_code == 400 and b"a dataset is a .jsonl" in refused.content
    assert client_in.post(reverse("training:dataset_upload"), {}).status_code == 400

    monkeypatch.setattr(services, "MAX_UPLOAD_BYTES", 100)
    too_big = upload(client_in, "big.jsonl", b'{"text": "x"}\n' * 20)
    assert too_big.status_code == 413 and b"is over" in too_big.content

    client.force_login(other_user)
    assert client.get(response["Location"]).status_code == 404  # someone else's upload
    assert client.get("/training/datasets/import/not-a-token/").status_code == 404

    garbage = upload(client_in, "junk.parquet", b"PAR1 this is not parquet")
    page = client_in.get(garbage["Location"])
    assert page.status_code == 200 and b"cannot be read" in page.content


def test_upload_needs_the_csrf_token(fresh_library, user):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    response = strict.post(reverse("training:dataset_upload"), {"file": SimpleUploadedFile("a.csv", CSV)})
    assert response.status_code == 403
    assert not (fresh_library / "work" / "dataset-uploads").exists() or \
        not any((fresh_library / "work" / "dataset-uploads").iterdir())


def test_dataset_page_stats_and_chat_preview(client_in, registered, tmp_path, user):
    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Explain item {i}.", "output": f"Item {i} is fine."})
                           + "\n" for i in range(10)))
    version = services.dataset_import(source=src, name="chat", owner=user)
    url = reverse("training:dataset_detail", args=["chat"])
    page = client_in.get(url)
    text = page.content.decode()
    assert page.status_code == 200
    assert "alpaca" in text and "9 train · 1 validation" in text and "Explain item" in text
    assert "Not measured yet." in text and '<option>demo-llama-base</option>' in text

    done = client_in.post(reverse("training:dataset_stats", args=["chat"]), {"v": "1", "model": registered})
    assert done.status_code == 302
    page = client_in.get(url).content.decode()
    report = selectors.dataset_stats_reports(version=version)[0]
    png = reverse("assets:file_raw", args=[report.asset.name, report.number, "lengths.png"])
    assert f'src="{png}"' in page and "No problems: every row fits the model." in page
    image = client_in.get(png)
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    stats_partial = client_in.get(url, {"partial": "stats"}, HTTP_HX_REQUEST="true").content.decode()
    assert 'id="dataset-stats"' in stats_partial and "<h1>" not in stats_partial

    preview = client_in.get(url, {"model": registered, "row": "2", "partial": "chat"}, HTTP_HX_REQUEST="true")
    body = preview.content.decode()
    assert 'id="chat-preview"' in body and "&lt;s&gt;user\nExplain item" in body and "<h1>" not in body
    full = client_in.get(url, {"model": registered, "row": "2"}).content.decode()
    assert 'id="chat-preview"' in full  # the same without JavaScript

    # Only registered models: a path typed into the form reads nothing.
    refused = client_in.get(url, {"model": "/etc", "row": "1"}).content.decode()
    assert "is not a registered model" in refused
    bad_row = client_in.get(url, {"model": registered, "row": "999"}).content.decode()
    assert "row is a number from 1 to 9" in bad_row
    client_in.post(reverse("training:dataset_stats", args=["chat"]), {"v": "1", "model": "/etc"})
    assert len(selectors.dataset_stats_reports(version=version)) == 1


def test_dataset_page_missing_and_not_a_dataset(client_in, fresh_library, tmp_path):
    assert client_in.get(reverse("training:dataset_detail", args=["nope"])).status_code == 404
    from apps.assets.services import asset_import

    (tmp_path / "r.txt").write_text("x")
    asset_import(source=tmp_path / "r.txt", kind="report", name="rep")
    assert client_in.get(reverse("training:dataset_detail", args=["rep"])).status_code == 404
    assert client_in.get(reverse("training:dataset_detail", args=["rep"]), {"v": "x"}).status_code == 404


def test_web_pages_import_no_torch(client_in, fresh_library):
    """The pages themselves (list, upload, mapping step) stay free of torch and transformers."""
    import subprocess

    code = ("import sys, django; django.setup()\n"
            "import apps.training.views.datasets, apps.training.tasks.dataset\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "audobon_site.settings"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
