"""The `audobon` command on a home that was never set up: one line saying what to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AUDOBON = str(Path(sys.executable).with_name("audobon"))


def test_a_command_on_a_fresh_home_says_what_to_run(tmp_path):
    env = {**os.environ, "AUDOBON_HOME": str(tmp_path / "fresh"), "HF_HUB_OFFLINE": "1"}
    for args in (["jobs", "list"], ["import_dataset", "/etc/hostname"]):
        proc = subprocess.run([AUDOBON, *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert "run `audobon migrate` (or `audobon up`, which migrates) first" in proc.stderr
