"""The registry from the shell: inspect (without Django), scan, compare, diff."""

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.proc import REPO
from tests.registry.zoo import llama_like

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_inspect_model_runs_without_loading_django(tmp_path):
    model = llama_like(tmp_path / "m")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no settings, no AUDOBON_HOME
    res = subprocess.run([sys.executable, "-m", "audobon_site.cli", "inspect_model", str(model), "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["schema"] == "audobon.inspect/1" and report["architecture"]["model_type"] == "llama"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    res = subprocess.run([sys.executable, "-m", "audobon_site.cli", "inspect_model", str(bad)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "bad.safetensors" in res.stderr and "Traceback" not in res.stderr


def test_scan_compare_diff_commands(tmp_path, fresh_library):
    base = llama_like(tmp_path / "zoo" / "base")
    llama_like(tmp_path / "zoo" / "tuned", base=base, scale=0.01, seed=1)
    llama_like(tmp_path / "zoo" / "wide", hidden=32, seed=2)
    scanned = json.loads(run("scan_models", str(tmp_path / "zoo"), "--json", "--import"))
    assert scanned["found"] == 3 and not scanned["errors"] and len(scanned["registered"]) == 3
    from apps.assets.selectors import asset_version_get
    assert not asset_version_get(ref="wide").location  # imported into the store
    text = run("compare_models", "base", "wide")
    assert "weight_merge    no" in text and "[64, 16] vs [64, 32]" in text
    matrix = json.loads(run("compare_models", "base", "tuned", str(tmp_path / "zoo" / "wide"), "--json"))
    assert len(matrix["pairs"]) == 3
    out = tmp_path / "heat.png"
    diff = json.loads(run("diff_models", "base", "tuned", "--out", str(out), "--json"))
    assert out.is_file() and 0 < diff["max_rel_l2"] < 0.1
    with pytest.raises(CommandError, match="neither a path nor a library model"):
        run("diff_models", "base", "nope")
    with pytest.raises(CommandError, match="compare needs two or more models"):
        run("compare_models", "base")
