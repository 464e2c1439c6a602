"""Assembly from the shell, and a run killed with -9: nothing registered, rerun succeeds."""

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.proc import REPO, audobon, audobon_env

pytestmark = pytest.mark.django_db

RECIPE = """merge_method: linear
models:
  - model: demo-llama-tune-even
    parameters: {weight: 0.3}
  - model: demo-llama-tune-late
    parameters: {weight: 0.7}
"""


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


@pytest.fixture
def demo(fresh_library):
    from apps.registry import services

    services.demo_models_register()


def test_dry_run_assemble_and_extractions(demo, tmp_path):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(RECIPE)
    plan = json.loads(run("assemble", str(recipe), "--dry-run", "--json"))
    assert plan["method"] == "linear" and plan["accounting"]["output_tensors"] > 0
    assert "output tensors" in run("assemble", str(recipe), "--dry-run")
    done = json.loads(run("assemble", str(recipe), "--json", "--out", str(tmp_path / "copy")))
    assert (done["asset"], done["version"], done["reused"]) == ("mix", 1, False)
    assert (tmp_path / "copy" / "config.json").is_file()
    assert json.loads(run("assemble", str(recipe), "--json"))["reused"] is True
    lora = json.loads(run("extract_lora", "--base", "demo-llama-base", "--tuned", "mix", "--energy", "0.9",
                          "--json"))
    assert lora["version"] == 1
    comps = json.loads(run("extract_components", "mix", "--select", "head", "embed", "--json"))
    assert comps["components"] == ["head", "embed"]
    with pytest.raises(CommandError, match="no such recipe file"):
        run("assemble", str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("weight: 0.3", "wieght: 0.3"))
    with pytest.raises(CommandError, match="wieght"):
        run("assemble", str(bad))


SLOW_RUN = """
import sys, time
import django
django.setup()
from apps.assembly.engine import executor
real = executor._merge_one
def slow(*a, **k):
    time.sleep(0.2)
    return real(*a, **k)
executor._merge_one = slow
from apps.assembly import services
services.assemble(text=open(sys.argv[1]).read(), name="killed")
"""


def test_kill_9_mid_run_registers_nothing_and_a_rerun_succeeds(tmp_path):
    env = audobon_env(tmp_path / "home")
    assert audobon(env, "migrate", "-v", "0").returncode == 0
    assert audobon(env, "demo_models", timeout=300).returncode == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(recipe)], env=env, cwd=REPO)
    work = tmp_path / "home" / "work" / "assemble"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(work.glob("*/.model.tmp-*/*.safetensors")):
        time.sleep(0.05)
    assert list(work.glob("*/.model.tmp-*")), "the run never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    missing = audobon(env, "export_asset", "killed", str(tmp_path / "x"))
    assert missing.returncode != 0 and "no asset named 'killed'" in missing.stderr
    again = audobon(env, "assemble", str(recipe), "--name", "killed", "--json", timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == 1
    assert list(work.iterdir()) == []  # the killed run's folder is gone, and so is this run's


def test_validation_turned_off_or_not_fitting_is_recorded_on_the_version(demo, tmp_path, settings):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(RECIPE)
    off = json.loads(run("assemble", str(recipe), "--json", "--no-validate", "--name", "unvalidated"))
    assert set(off["validation"]["skipped"]) == {"result", "demo-llama-tune-even", "demo-llama-tune-late"}
    assert "turned off for this run (--no-validate)" in off["validation"]["skipped"]["result"]

    settings.AUDOBON_VALIDATION_MEMORY = 1 << 20  # 1 MiB: no model fits
    recipe.write_text(RECIPE.replace("0.3", "0.4").replace("0.7", "0.6"))
    done = json.loads(run("assemble", str(recipe), "--json", "--name", "too-big"))
    assert done["version"] == 1  # the merge completes and is registered
    skipped = done["validation"]["skipped"]
    assert set(skipped) == {"result", "demo-llama-tune-even", "demo-llama-tune-late"}
    assert "GiB to evaluate, 0.00 GiB available on" in skipped["result"]
    assert done["validation"]["losses"]["result"] is None


def test_a_recipe_can_turn_validation_off_on_purpose(demo, tmp_path):
    recipe = tmp_path / "quiet.yaml"
    recipe.write_text(RECIPE.replace("0.3", "0.2").replace("0.7", "0.8") + "validation: {enabled: false}\n")
    done = json.loads(run("assemble", str(recipe), "--json"))
    assert "turned off by the recipe" in done["validation"]["skipped"]["result"]
    assert done["validation"]["losses"] == {}
