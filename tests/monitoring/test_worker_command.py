"""`audobon worker`: a worker started by hand takes queued jobs; a bad --device is refused."""

import json
import signal
import subprocess
import sys
import time

from tests.proc import REPO, audobon, audobon_env


def test_a_worker_started_by_hand_runs_a_queued_job(tmp_path):
    env = audobon_env(tmp_path / "home")
    done = audobon(env, "jobs", "submit", "selftest", "--spec", '{"steps": 2, "step_seconds": 0}')
    assert done.returncode == 0, done.stderr
    job = int(done.stdout.strip().splitlines()[-1])  # `jobs submit` prints the id
    proc = subprocess.Popen([sys.executable, "-m", "audobon_site.cli", "worker", "--queue", "light",
                             "--device", "cpu"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            shown = audobon(env, "jobs", "show", str(job), "--json")
            status = json.loads(shown.stdout)["status"] if shown.returncode == 0 else None
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        assert status == "succeeded"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "starting a light worker on the embedded default" in out and "on cpu" in out


def test_a_bad_device_is_refused_in_one_line(tmp_path):
    done = audobon(audobon_env(tmp_path / "home"), "worker", "--device", "gpu7")
    assert done.returncode != 0 and "give cpu or cuda:N" in done.stderr and "Traceback" not in done.stderr
