"""The `audobon` command on a home that was never set up: a command either sets up the
database on first use and works, or says in one line what to do; never a traceback for
an expected condition."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

AUDOBON = str(Path(sys.executable).with_name("audobon"))


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AUDOBON_") and k != "DJANGO_SETTINGS_MODULE"}
    return {**env, "AUDOBON_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra}


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AUDOBON, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_command_on_a_fresh_home_sets_up_the_database_and_works(tmp_path):
    env = _env(tmp_path / "fresh")
    listed = _run(env, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    assert f"first use of {(tmp_path / 'fresh').resolve()}: setting up its database" in listed.stderr
    assert json.loads(listed.stdout) == []
    # The next command finds it set up and says nothing about it.
    again = _run(env, "jobs", "list", "--json")
    assert again.returncode == 0 and "first use" not in again.stderr


def test_import_asset_and_assemble_on_a_fresh_home(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a"}\n')
    imported = _run(_env(tmp_path / "a"), "import_asset", str(data), "--kind", "dataset", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["asset"] == "rows.jsonl"

    recipe = tmp_path / "merge.yaml"
    recipe.write_text("merge_method: linear\nmodels:\n  - model: nowhere-a\n    parameters: {weight: 0.5}\n"
                      "  - model: nowhere-b\n    parameters: {weight: 0.5}\n")
    assembled = _run(_env(tmp_path / "b"), "assemble", str(recipe), "--dry-run")
    # A recipe naming models the library lacks is a user error: one message, no traceback.
    assert assembled.returncode == 1
    assert "Traceback" not in assembled.stderr and "OperationalError" not in assembled.stderr
    assert "no such table" not in assembled.stderr
    assert "nowhere-a" in assembled.stderr


def test_a_database_behind_this_version_says_what_to_run(tmp_path):
    home = tmp_path / "old"
    home.mkdir()
    # Migrations were applied once (the table exists), but not the ones this version needs.
    with sqlite3.connect(home / "db.sqlite3") as db:
        db.execute("CREATE TABLE django_migrations (id integer primary key, app varchar(255), "
                   "name varchar(255), applied datetime)")
    for args in (["jobs", "list"], ["import_dataset", "/etc/hostname"]):
        proc = _run(_env(home), *args)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"audobon: the database of {home.resolve()} is not set up for this version of Audobon; "
            "run `audobon migrate` (or `audobon up`, which migrates) first"]


def test_an_unreachable_database_is_one_line(tmp_path):
    env = _env(tmp_path / "pg", AUDOBON_DATABASE_URL="postgres://nobody@127.0.0.1:9/audobon")
    proc = _run(env, "jobs", "list")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audobon: cannot reach the database audobon on 127.0.0.1")


def test_commands_that_need_no_database_do_not_create_one(tmp_path):
    home = tmp_path / "bare"
    env = _env(home)
    assert _run(env, "help").returncode == 0
    assert _run(env, "jobs", "--help").returncode == 0
    assert _run(env, "no_such_command").returncode != 0
    assert not (home / "db.sqlite3").exists()
