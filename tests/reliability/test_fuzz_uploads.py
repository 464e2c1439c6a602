"""Fuzzing the upload endpoints through Django's test client, logged in:
- the chunked library upload (`assets:upload_create`, `upload_chunk`, `upload_finish`,
  `upload_state`): random JSON and non-JSON bodies, names, kinds, file lists (paths, sizes
  of every type), then random sequences of chunks (indexes, offsets, bodies, a
  Content-Length that says less than the body, a junk one), finishes and discards;
- the dataset upload (`training:dataset_upload`) with random file names and contents (the
  dataset fuzzing's files: every kind, broken ones too), then the mapping page with random
  choices, and sometimes the import itself.

The property: never a 500 (the client raises a view's exception), always an answer with a
status the view documents; a refused create leaves no upload row and no folder; what an
upload says it received is what is on disk, never more than the file's size.

Budget: 240 derandomized cases in three tests (times AUDOBON_FUZZ_EXAMPLES, see
tests/reliability/conftest.py).
"""

from __future__ import annotations

import io
import json
import random
import uuid

import pytest
from django.urls import reverse
from hypothesis import event, example, given
from hypothesis import strategies as st

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.models import Upload
from apps.monitoring.models import Job
from apps.training.engine.dataset_prep import FIELDS, FORMATS

from .conftest import fuzz
from .test_fuzz_datasets import BASES, WRITERS, record

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12)
file_entries = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "path": st.one_of(st.sampled_from(["a.txt", "dir/b.bin", "../x", "/etc/passwd", ".env", "a//b", "",
                                           "\x00",
                                           "é/ü.txt", "a" * 300, "a/./b", "C:\\x"]), json_values),
        "size": st.one_of(st.sampled_from([0, 1, 5, 2**31, 2**63, 10**30, -1, True, 1.5, "5", None]),
                          json_values)}))
create_bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.sampled_from(["bundle", "", " ", "a/b", "a@1", "x" * 300, "\x00", "ok name"]),
                          json_values),
        "kind": st.one_of(st.sampled_from(["dataset", "model", "other", "", "bogus"]), json_values),
        "files": st.one_of(st.lists(file_entries, max_size=4), json_values),
    }).map(lambda v: json.dumps(v).encode()))


@pytest.fixture
def ada(client, user, fresh_library):
    client.force_login(user)
    return client


def upload_folders() -> set[str]:
    root = asset_services._uploads_root()
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


@fuzz(150)
@given(body=create_bodies)
@example(body=b"[1]")  # found: AttributeError ('list' object has no attribute 'get'), a 500
@example(body=b'{"name": "u", "kind": "other", "files": "ab"}')  # found: AttributeError on 'a'.get
@example(body=b'{"name": "u", "kind": "other", "files": 5}')  # found: TypeError (len of an int)
@example(body=b'{"name": 5, "kind": "other", "files": [{"path": "a", "size": 1}]}')
def test_fuzz_upload_create(ada, body):
    rows, folders = Upload.objects.count(), upload_folders()
    answer = ada.post(reverse("assets:upload_create"), data=body, content_type="application/json")
    assert answer.status_code in (201, 400), answer.status_code
    data = answer.json()
    if answer.status_code == 400:
        assert isinstance(data["error"], str) and data["error"]
        assert Upload.objects.count() == rows and upload_folders() == folders
        event("refused")
    else:
        assert Upload.objects.count() == rows + 1 and data["id"] in upload_folders()
        event("created")


steps = st.lists(st.one_of(
    st.tuples(st.just("chunk"), st.integers(0, 3), st.one_of(st.integers(-2, 12).map(str),
                                                             st.sampled_from(["", "x", "1e3",
                                                                              "99999999999999999999"])),
              st.binary(max_size=12), st.sampled_from([None, None, "0", "3", "-5", "abc", "99999"])),
    st.tuples(st.sampled_from(["finish", "state", "delete", "resume"]))), max_size=8)


@fuzz(60)
@given(sizes=st.lists(st.integers(0, 10), min_size=1, max_size=3), steps=steps)
@example(sizes=[0], steps=[("finish",)])  # found: the import failed, no folder for an empty file
def test_fuzz_chunked_upload(ada, sizes, steps):
    created = ada.post(reverse("assets:upload_create"), content_type="application/json", data=json.dumps(
        {"name": f"u-{uuid.uuid4().hex[:8]}", "kind": "other",
         "files": [{"path": f"f{i}.bin", "size": s} for i, s in enumerate(sizes)]}))
    assert created.status_code == 201
    upload_id = created.json()["id"]
    gone = False
    for step in steps:
        if step[0] == "chunk":
            _, index, offset, body, length = step
            extra = {} if length is None else {"CONTENT_LENGTH": length}
            if length is not None and length.isdigit() and int(length) > len(body):
                extra = {}  # the test client cannot send fewer bytes than it says
            answer = ada.put(reverse("assets:upload_chunk", args=[upload_id, index]) + f"?offset={offset}",
                             data=body, content_type="application/octet-stream", **extra)
            assert answer.status_code in ((404,) if gone else (200, 409)), answer.status_code
            if answer.status_code == 409:
                assert answer.json()["error"]
        elif step[0] == "finish":
            answer = ada.post(reverse("assets:upload_finish", args=[upload_id]))
            assert answer.status_code in ((404,) if gone else (200, 409)), answer.status_code
            event(f"finish {answer.status_code}")
            if answer.status_code == 200:  # the import ran (inline in tests) and took the upload
                job = Job.objects.get(pk=answer.json()["job"])
                assert job.status == Job.Status.SUCCEEDED, job.error
                version = asset_selectors.asset_version_get(ref=job.result["asset"])
                assert sorted(version.manifest) == [f"f{i}.bin" for i in range(len(sizes))]
                gone = not Upload.objects.filter(pk=upload_id).exists()
        elif step[0] == "resume":  # the client asks where to resume, then sends the rest
            answer = ada.get(reverse("assets:upload_state", args=[upload_id]))
            if gone:
                assert answer.status_code == 404
                continue
            for i, f in enumerate(answer.json()["files"]):
                rest = f["size"] - f["received"]
                if rest > 0:
                    url = reverse("assets:upload_chunk", args=[upload_id, i])
                    sent = ada.put(url + f"?offset={f['received']}",
                                   data=b"r" * rest, content_type="application/octet-stream")
                    assert sent.status_code in (200, 409)  # 409 once finished
        elif step[0] == "delete":
            answer = ada.delete(reverse("assets:upload_state", args=[upload_id]))
            assert answer.status_code in (200, 404)
            gone = True
        else:
            answer = ada.get(reverse("assets:upload_state", args=[upload_id]))
            assert answer.status_code == (404 if gone else 200)
    upload = Upload.objects.filter(pk=upload_id).first()
    if upload is not None:
        received = asset_services.upload_received(upload)
        assert all(0 <= got <= f["size"] for f, got in zip(upload.files, received, strict=True))
        state = ada.get(reverse("assets:upload_state", args=[upload_id])).json()
        assert [f["received"] for f in state["files"]] == received


NAMES = ["data.jsonl", "data.json", "data.csv", "data.parquet", "data.txt", "data.JSONL", "data.exe", "",
         "noext",
         "../../x.jsonl", "a\x00b.csv", "é.txt", "x" * 300 + ".json"]


@fuzz(30)
@given(seed=st.integers(0, 2**32 - 1), suffix=st.sampled_from(sorted(WRITERS)), name=st.sampled_from(NAMES),
       hostile=st.sampled_from([0.0, 0.2, 1.0]), base=st.sampled_from(range(len(BASES))),
       choices=st.fixed_dictionaries({}, optional={
           "format": st.sampled_from(["", *FORMATS, "bogus"]),
           "seed": st.sampled_from(["0", "-1", "x", "2147483648"]),
           "validation_fraction": st.sampled_from(["0.1", "0", "0.95", "nan", "x"]),
           "labels": st.sampled_from(["", "a,b", ",,,", "x" * 3000]),
           "map_0": st.sampled_from(["", *FIELDS, "bogus"]), "map_1": st.sampled_from(["", *FIELDS]),
           "name": st.sampled_from(["", "set", "a/b", "x" * 300]), "map_99": st.just("text")}),
       submit=st.booleans())
def test_fuzz_dataset_upload_and_mapping(ada, seed, suffix, name, hostile, base, choices, submit):
    rng = random.Random(seed)
    content = WRITERS[suffix](rng, [record(rng, BASES[base], hostile) for _ in range(rng.randint(0, 6))])
    filename = f"data{suffix}" if name == "data.jsonl" else name  # mostly a name that fits the content
    upload = io.BytesIO(content)
    upload.name = filename  # as a browser names it; SimpleUploadedFile would refuse "" itself
    answer = ada.post(reverse("training:dataset_upload"), {"file": upload})
    assert answer.status_code in (302, 400, 413), answer.status_code
    if answer.status_code != 302:
        event(f"upload {answer.status_code}")
        return
    page = ada.get(answer["Location"])
    assert page.status_code == 200
    previewed = ada.post(answer["Location"], {**choices, "preview": "1"}, HTTP_HX_REQUEST="true")
    assert previewed.status_code == 200
    if submit:
        done = ada.post(answer["Location"], choices)
        assert done.status_code in (302, 400), done.status_code
        event(f"import {done.status_code}")
