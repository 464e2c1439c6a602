"""The library from the shell: import, export, verify, gc, backup, restore, recovery points."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.assets.models import Asset

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_import_export_round_trip(model_dir, tmp_path):
    data = json.loads(run("import_asset", str(model_dir), "--kind", "model", "--tag", "base", "--json"))
    assert (data["asset"], data["version"], data["files"]) == ("tiny-llama", 1, 3)
    out = tmp_path / "out"
    run("export_asset", "tiny-llama@1", str(out))
    assert (out / "tokenizer" / "vocab.txt").read_text() == "a\nb\nc\n"
    with pytest.raises(CommandError, match="no asset named 'nope'"):
        run("export_asset", "nope", str(tmp_path / "x"))


def test_import_errors_are_clear(tmp_path):
    with pytest.raises(CommandError, match="no such file or folder"):
        run("import_asset", str(tmp_path / "absent"), "--kind", "model")
    assert Asset.objects.count() == 0


def test_verify_gc_backup_restore_recovery_points(model_dir, tmp_path, fresh_library):
    run("import_asset", str(model_dir), "--kind", "model")
    assert json.loads(run("verify_store", "--json"))["ok"] is True
    assert "would free 0 bytes" in run("gc")
    backup = json.loads(run("backup", str(tmp_path / "lib.tar"), "--json"))
    assert backup["verified"] and backup["blobs"] == 3
    assert json.loads(run("restore", str(tmp_path / "lib.tar"), "--json"))["assets_added"] == 0
    assert "recovery point 'rp': 1 assets" in run("recovery_point", "create", "rp")
    assert "rp" in run("recovery_point", "list")
    assert "0 assets, moved 0" in run("recovery_point", "restore", "rp")
    with pytest.raises(CommandError, match="no recovery point named 'zz'"):
        run("recovery_point", "restore", "zz")
    assert "in the trash" in run("trash", "put", "tiny-llama")
    assert run("trash", "list") == "tiny-llama"
    assert "deleted 1 assets" in run("trash", "empty")
    assert json.loads(run("gc", "--execute", "--json"))["blobs"] == 3
