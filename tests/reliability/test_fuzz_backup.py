"""Fuzzing restore (`library_restore`): a real backup of a small library (two assets, three
versions with lineage, tags, an owner, a recovery point), then
- its tables.json changed (a value replaced by a weird one — paths, hashes, sizes, ids,
  locations, kinds, names, types —, a key dropped or added, a row duplicated) and written
  back as a consistent archive, so only the tables' own checks stand between it and the
  library;
- the archive's bytes changed (flips, cuts, a member renamed) so the archive's checks must
  catch it.
Restored into an empty library each time.

The property: the restore succeeds (and the library then matches the tables), or it raises
the project's error (AssetInputError or StoreError, which name the table, row and field, or
the member) and writes nothing: no rows, no blobs, no temporary files in the store. Every
answer within a few seconds.

Budget: 160 derandomized cases in two tests (times AUDOBON_FUZZ_EXAMPLES, see
tests/reliability/conftest.py).
"""

from __future__ import annotations

import copy
import json
import random
import tempfile
import time
from pathlib import Path

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import event, example, given
from hypothesis import strategies as st

from apps.assets import services
from apps.assets.engine.archive import TABLES_NAME, backup_write
from apps.assets.engine.errors import StoreError
from apps.assets.engine.store import FileEntry
from apps.assets.models import Asset, AssetVersion, Backup, RecoveryPoint

from .conftest import fuzz

SECONDS = 5.0
WEIRD = [None, True, False, 0, -1, 1, 2**31, 2**63, 1.5, float("nan"), "", " ", "x", "model", "dataset",
         "../../etc/passwd", "/etc/passwd", ".hidden", "a/../b", "a//b", "C:\\x", "\x00", "é" * 300,
         "0" * 64, "f" * 64, "F" * 64, "g" * 64, "00000000-0000-0000-0000-000000000000", "not-a-uuid",
         [], [1], ["x"], {}, {"a": 1}, {"sha256": "0" * 64, "size": 1}, "/tmp", "x" * 600]


@pytest.fixture
def backup(db, tmp_path, settings, user) -> dict:
    """A backup of a small library, the library then emptied: {path, tables, shas, store}."""
    settings.AUDOBON_HOME = tmp_path / "source"
    (settings.AUDOBON_HOME / "store").mkdir(parents=True)
    store = services.blob_store()

    def blob(name: str, data: bytes) -> FileEntry:
        sha, size = store.ingest_stream([data])
        return FileEntry(name, sha, size)

    v1 = services.asset_version_create(name="base", kind="model", owner=user, created_by=user,
                                       tags=["llama", "base"],
                                       entries=[blob("config.json", b"{}"),
                                                blob("w/model.safetensors", b"w1")])
    v2 = services.asset_version_create(name="base", kind="model", entries=[blob("config.json", b"{\"a\":1}")],
                                       parents=[v1], message="second")
    services.asset_version_create(name="chat set", kind="dataset", entries=[blob("train.jsonl", b"{}\n")],
                                  parents=[v2])
    services.recovery_point_create(name="before")
    path = tmp_path / "library.tar"
    services.library_backup(dest=path)
    tables = json.loads(services.library_tables_dump())
    shas = sorted(services.referenced_blobs())
    for model in (AssetVersion, Asset, RecoveryPoint, Backup):
        model.objects.all().delete()
    return {"path": path, "tables": tables, "shas": shas, "store": store}


def rows_now() -> tuple:
    return (Asset.objects.count(), AssetVersion.objects.count(), RecoveryPoint.objects.count(),
            Backup.objects.count())


def restore_into_empty_library(path: Path) -> tuple[dict | None, Exception | None, list[str]]:
    """Restore `path` into an empty store; the database changes are rolled back afterwards.
    (the result or the error, and the files the store holds after it)."""
    with tempfile.TemporaryDirectory() as home, override_settings(AUDOBON_HOME=Path(home)):
        (Path(home) / "store").mkdir()
        result = error = None
        with transaction.atomic():
            before = rows_now()
            started = time.monotonic()
            try:
                result = services.library_restore(path=path)
            except (services.AssetInputError, StoreError) as exc:
                error = exc
                assert rows_now() == before, "a refused restore wrote rows"
            assert time.monotonic() - started < SECONDS
            if result is not None:
                assert Asset.objects.count() >= result["assets_added"]
                assert Backup.objects.filter(direction=Backup.Direction.RESTORE).count() == 1
                assert services.store_verify()[0].ok
            transaction.set_rollback(True)
        # Blobs and temporary files; the store's hash cache (made when it opens) is no content.
        files = sorted(str(p.relative_to(home)) for p in Path(home).rglob("*")
                       if p.is_file() and not p.name.startswith("hashcache.sqlite3"))
    return result, error, files


def paths(node, here=()):
    yield here
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*here, i))


def mutate_tables(tables: dict, rng: random.Random, edits: int) -> dict:
    tables = copy.deepcopy(tables)
    for _ in range(edits):
        target = rng.choice([p for p in paths(tables) if p])
        parent = tables
        for step in target[:-1]:
            parent = parent[step]
        last = target[-1]
        kind = rng.randrange(5)
        if kind == 0 or (kind == 4 and isinstance(parent, dict) and isinstance(last, str)
                         and last not in ("manifest", "heads")):
            parent[last] = copy.deepcopy(rng.choice(WEIRD))
        elif kind == 1:
            del parent[last]
        elif kind == 2 and isinstance(parent, dict):
            parent[rng.choice([*WEIRD[12:20], "extra", "id", "location"])] = copy.deepcopy(rng.choice(WEIRD))
        elif kind == 3 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))  # a row (or item) twice
        elif isinstance(parent, dict) and isinstance(last, str):
            parent[rng.choice(WEIRD[12:20]) if rng.random() < 0.5 else last + "x"] = parent.pop(last)
    return tables


@fuzz(100)
@given(seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 3))
@example(seed=0, edits=0)
@example(seed=224, edits=1)  # found: KeyError 'owner' after the blobs were stored
@example(seed=722275944, edits=1)  # found: a file's size changed, restored, then verify failed
def test_fuzz_tables(backup, tmp_path, seed, edits):
    tables = mutate_tables(backup["tables"], random.Random(seed), edits)
    try:
        raw = json.dumps(tables).encode("utf-8", errors="surrogatepass")
    except ValueError:
        return
    dest = tmp_path / f"mutated-{seed}-{edits}.tar"
    dest.unlink(missing_ok=True)
    backup_write(dest, store=backup["store"], shas=backup["shas"], tables=raw, meta={})
    try:
        result, error, files = restore_into_empty_library(dest)
    finally:
        dest.unlink()
    if error is not None:
        assert files == [], files  # refused before any blob was written
        message = str(error)
        assert message and any(word in message for word in (
            "backup table", "tables.json", "backup format", TABLES_NAME)), message
        event(f"refused: {message.split(':')[0][:40]}")
    else:
        event("restored")
        assert result["assets_in_backup"] == len(tables["assets"])


@fuzz(60)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["flip", "cut", "rename", "zero"]))
def test_fuzz_archive_bytes(backup, tmp_path, seed, kind):
    rng = random.Random(seed)
    data = bytearray(backup["path"].read_bytes())
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        del data[rng.randrange(len(data)):]
    elif kind == "zero":
        at = rng.randrange(len(data))
        data[at:at + 512] = bytes(min(512, len(data) - at))
    else:  # a member's name in its header changed (and its checksum left as it was, or not)
        starts = [i for i in range(0, len(data) - 512, 512)
                  if data[i:i + 5] in (b"audob", b"table", b"blobs")]
        at = rng.choice(starts)
        name = rng.choice([b"../escape", b"/abs", b"blobs/zz/x", b"tables.json", b"audobon-backup.json",
                           b"x"])
        data[at:at + 100] = name.ljust(100, b"\0")
    path = tmp_path / "damaged.tar"
    path.write_bytes(bytes(data))
    result, error, files = restore_into_empty_library(path)
    if error is None:
        event("restored")  # a flip in padding or unused header bytes changes nothing that matters
        assert result["assets_in_backup"] == len(backup["tables"]["assets"])
    else:
        assert files == [] or all(f.startswith("store/") and ".tmp" not in f for f in files), files
        event(f"refused: {type(error).__name__}")


def test_the_backup_restores_whole(backup):
    result, error, files = restore_into_empty_library(backup["path"])
    assert error is None and result == {"assets_added": 2, "versions_added": 3, "assets_in_backup": 2}
    assert len([f for f in files if f.startswith("store/")]) == len(backup["shas"])


def test_rows_without_their_optional_people_restore(backup, tmp_path):
    """Found by the fuzzing: the check lets `owner` and `created_by` be absent (they are
    optional), and the restore then read them with [] (KeyError, after storing the blobs)."""
    tables = copy.deepcopy(backup["tables"])
    del tables["assets"][0]["owner"]
    del tables["versions"][0]["created_by"]
    dest = tmp_path / "people.tar"
    backup_write(dest, store=backup["store"], shas=backup["shas"], tables=json.dumps(tables).encode(),
                 meta={})
    result, error, _ = restore_into_empty_library(dest)
    assert error is None and result["versions_added"] == 3


def test_a_file_whose_size_is_not_its_blobs_is_refused(backup, tmp_path):
    """Found by the fuzzing: a row whose size disagrees with its blob restored, and every
    later verify then reported the blob corrupt."""
    tables = copy.deepcopy(backup["tables"])
    row = next(v for v in tables["versions"] if "w/model.safetensors" in v["manifest"])
    row["manifest"]["w/model.safetensors"]["size"] += 1
    dest = tmp_path / "sized.tar"
    backup_write(dest, store=backup["store"], shas=backup["shas"], tables=json.dumps(tables).encode(),
                 meta={})
    result, error, files = restore_into_empty_library(dest)
    assert result is None and files == []
    assert "'w/model.safetensors': its size 3 is not its blob's (2 bytes)" in str(error)
