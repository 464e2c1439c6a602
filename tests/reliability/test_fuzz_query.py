"""Fuzzing query strings: every GET a logged-in user can reach, found by walking the URL
resolver (Django's admin left out: staff only, Django's own code), its path parameters filled
with the user's own things (an asset with versions and files, a dataset, a registered model,
a job, a run, a recipe, an upload, a staged dataset upload, a recovery point) or with junk
(huge and zero ids, odd names and paths), and random query parameters: the keys the views
read and random ones, values with NULs, huge and negative numbers and pages, unicode, and
keys repeated; with and without htmx's header.

The property: never a 500 (Django's test client raises a view's exception), always an answer
within a few seconds. A sweep first sends every route one fixed hostile query string, so
every view is exercised whatever the random draw.

Budget: 500 derandomized draws plus the sweep (times AUDOBON_FUZZ_EXAMPLES, see
tests/reliability/conftest.py); about half draw a POST-only route, answered 405 once and
then skipped.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlencode

import pytest
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse
from hypothesis import event, example, given
from hypothesis import strategies as st

from apps.assembly.models import Recipe
from apps.assets import services as asset_services
from apps.monitoring import services as job_services
from apps.registry import services as registry_services
from apps.registry.engine.discovery import FoundModel, fingerprint
from apps.training.models import TrainingRun
from apps.training.services import dataset as dataset_services
from tests.test_ownership import _llama_dir

from .conftest import fuzz

SECONDS = 5.0
SKIP = {"logout"}  # ends the session the fuzzing runs in


def routes() -> list[tuple[str, URLPattern]]:
    out = []

    def walk(patterns, prefix=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                if "admin" not in str(p.pattern):
                    walk(p.url_patterns, prefix + (f"{p.namespace}:" if p.namespace else ""))
            elif isinstance(p, URLPattern) and p.name and p.name not in SKIP:
                out.append((prefix + p.name, p))

    walk(get_resolver().url_patterns)
    return out


ROUTES = routes()
ROUTE_NAMES = [name for name, _ in ROUTES]
# Routes that answered a GET with 405 (POST only, whatever the query): not sent again.
POST_ONLY: set[str] = set()


@pytest.fixture
def world(db, client, user, tmp_path, fresh_library):
    """The user's own things, and the client logged in as them."""
    files = tmp_path / "notes"
    files.mkdir()
    (files / "notes.txt").write_text("some notes\n")
    (files / "sub").mkdir()
    (files / "sub" / "table.csv").write_text("a,b\n1,2\n")
    notes = asset_services.asset_import(source=files, kind="other", name="notes", owner=user)
    asset_services.asset_import(source=files, kind="other", name="notes", owner=user)  # a second version
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"row {i}", "label": "a"}) for i in range(4)) + "\n")
    dataset = dataset_services.dataset_import(source=data, name="rows", owner=user)
    model_dir = _llama_dir(tmp_path / "models" / "tiny")
    found = FoundModel(model_dir, "tiny", "test", fingerprint(model_dir))
    model = registry_services._inspect_and_register(found, None, source="test", owner=user)
    recipe = Recipe.objects.create(name="mine", text="merge_method: linear\n", owner=user)
    job = job_services.job_submit(kind="selftest", spec={"steps": 1, "step_seconds": 0}, owner=user)
    run = TrainingRun.objects.create(name="my-run", owner=user, spec={"name": "my-run"})
    run.jobs.add(job)
    upload = asset_services.upload_create(owner=user, name="up", kind="other",
                                          files=[{"path": "a.txt", "size": 3}])
    token = dataset_services.dataset_upload_stage(owner=user, filename="staged.jsonl",
                                                  chunks=[data.read_bytes()])
    point = asset_services.recovery_point_create(name="point", user=user)
    client.force_login(user)
    return {"client": client, "asset": notes.asset.name, "dataset": dataset.asset.name, "model": model.pk,
            "recipe": recipe.pk, "job": job.pk, "run": run.pk, "upload": upload.pk, "token": uuid.UUID(token),
            "point": point.pk}


def own_kwargs(name: str, pattern: URLPattern, w: dict) -> dict:
    values = {"job_id": w["job"], "run_id": w["run"], "model_id": w["model"], "upload_id": w["upload"],
              "point_id": w["point"], "token": w["token"], "number": 1, "index": 0,
              "component_id": "layers.0", "kind": "store_verify", "path": "notes.txt",
              "uidb64": "MQ", "token_str": "x"}
    kwargs = {}
    for key in pattern.pattern.converters:
        if key == "name":
            kwargs[key] = w["dataset"] if name.startswith("training:") else w["asset"]
        elif key == "token" and name == "login_link":
            kwargs[key] = "set-password"
        else:
            kwargs[key] = values.get(key, "x")
    return kwargs


JUNK = {
    "int": [0, 2**31, 2**63 - 1, 10**30],
    "str": ["x", "é", "a b", "..", "a@1", "notes@999", "x" * 500, "%00", "\u202e"],
    "path": ["../../etc/passwd", "sub/table.csv", "sub", "", "nope.txt", "a/" * 50 + "b", "notes.txt/x"],
    "uuid": [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)],
}
CONVERTER_KIND = {"IntConverter": "int", "StringConverter": "str", "PathConverter": "path",
                  "UUIDConverter": "uuid"}

KEYS = ["q", "page", "v", "model", "name", "offset", "other", "part", "partial", "recipe", "row", "run",
        "ids",
        "status", "kind", "method", "models", "base", "weight", "density", "base_model", "dataset", "next",
        "learning_rate", "epochs", "lora_r", "max_length", "seed", "batch_size", "format", "a", ""]
VALUES = ["", "0", "-1", "1", "2", "-99999999999999999999", "99999999999999999999", "1e309", "nan", "0x10",
          "\x00", "a\x00b", "é", "\ud7ff", "x" * 3000, "stats", "chat", "tokens", "rows", "notes", "notes@1",
          "rows@1", "tiny", "asset:notes", "kind:model tag:x", "'\"<script>", "../..", "1,2,x", "true", "[]",
          "{", "linear", "running", "succeeded", "selftest"]
queries = st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)),
                             st.one_of(st.sampled_from(VALUES), st.text(max_size=20),
                                       st.integers().map(str))), max_size=6)


def url_for(name: str, pattern: URLPattern, w: dict, junk: dict[str, int]) -> str | None:
    kwargs = own_kwargs(name, pattern, w)
    for key, converter in pattern.pattern.converters.items():
        if key in junk:
            options = JUNK[CONVERTER_KIND.get(type(converter).__name__, "str")]
            kwargs[key] = options[junk[key] % len(options)]
    try:
        return reverse(name, kwargs=kwargs)
    except NoReverseMatch:
        return None


def get(w: dict, url: str, query: list[tuple[str, str]], htmx: bool):
    # A lone surrogate cannot be sent in a URL at all: as a browser would, send its UTF-8
    # with the surrogate replaced.
    query = [(k.encode("utf-8", "replace").decode(), v.encode("utf-8", "replace").decode()) for k, v in query]
    started = time.monotonic()
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    answer = w["client"].get(url + ("?" + urlencode(query) if query else ""), **extra)
    assert time.monotonic() - started < SECONDS, url
    # healthz answers 503 when a worker is down: its documented answer, not a failure.
    assert answer.status_code < 500 or (url == "/healthz" and answer.status_code == 503), \
        (url, query, answer.status_code)
    return answer


HOSTILE = [("q", "\x00"), ("page", "-1"), ("page", "99999999999999999999"), ("v", "0"), ("v", "x"),
           ("recipe", "x"), ("partial", "stats"), ("model", "tiny"), ("row", "-5"), ("offset", "-1"),
           ("ids", "1,x"), ("other", "\x00"), ("run", "x"), ("part", "99999999999999999999"), ("status", "x"),
           ("kind", "x"), ("name", "x" * 300), ("base_model", "\x00"), ("q", "again")]


def test_every_route_answers_a_hostile_query(world):
    """The sweep: every route, with the user's things and a fixed hostile query, plain and htmx."""
    statuses, failed = {}, []
    world["client"].raise_request_exception = False  # every broken route named at once
    for name, pattern in ROUTES:
        url = url_for(name, pattern, world, {})
        assert url is not None, name
        for htmx in (False, True):
            try:
                statuses[name] = get(world, url, HOSTILE, htmx).status_code
                if statuses[name] == 405:
                    POST_ONLY.add(name)
            except AssertionError as exc:
                failed.append(f"{name} (htmx={htmx}): {exc}")
    assert not failed, "\n".join(failed)
    assert len(statuses) == len(ROUTES) > 40
    assert statuses["assets:library"] == 200 and statuses["monitoring:job_list"] == 200


@fuzz(500)
@given(route=st.sampled_from(ROUTE_NAMES),
       junk=st.dictionaries(st.sampled_from(["job_id", "run_id", "model_id", "upload_id", "point_id", "token",
                                             "number", "index", "component_id", "kind", "path", "name"]),
                            st.integers(0, 20), max_size=2),
       query=queries, htmx=st.booleans())
@example(route="registry:compat", junk={}, query=[("other", "\x00")], htmx=False)  # found: ValueError, a 500
@example(route="assembly:index", junk={}, query=[("recipe", "²")], htmx=False)
@example(route="monitoring:job_list", junk={}, query=[("page", "-99999999999999999999")], htmx=False)
def test_fuzz_query_strings(world, route, junk, query, htmx):
    if route in POST_ONLY:
        event("POST only")
        return
    pattern = dict(ROUTES)[route]
    url = url_for(route, pattern, world, junk)
    if url is None:
        event("no such url")
        return
    answer = get(world, url, query, htmx)
    if answer.status_code == 405:
        POST_ONLY.add(route)
    event(f"{answer.status_code}")
