"""The resource sampler's cost: `audobon run_monitor --every 2` (the process `audobon up`
starts) on a fresh AUDOBON_HOME, its CPU time over a window after start-up, as a share of
one core. Each reading is CPU, RAM, disk and GPUs (NVML, or nvidia-smi where NVML is
missing), written to the database, with the orphan sweep and the once-a-minute folding of
old samples.

    python benchmarks/sampler_overhead.py [--seconds 60] [--every 2]

Target: <= 1 % of one core at a 2 s interval.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
AUDOBON = str(Path(sys.executable).with_name("audobon"))


def _samples(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM monitoring_resourcesample").fetchone()[0]
    except sqlite3.Error:
        return 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--every", type=float, default=2)
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sampler-bench-"))
    env = {**os.environ, "AUDOBON_HOME": str(home),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([AUDOBON, "migrate", "-v", "0"], env=env, check=True)
    proc = subprocess.Popen([AUDOBON, "run_monitor", "--every", str(a.every)], env=env)
    try:
        ps = psutil.Process(proc.pid)
        # Past start-up (imports, Django): wait until two readings are in the database.
        db = home / "db.sqlite3"
        while _samples(db) < 2:
            if proc.poll() is not None:
                raise SystemExit("run_monitor exited")
            time.sleep(0.2)
        c0, t0 = sum(ps.cpu_times()[:2]), time.perf_counter()
        time.sleep(a.seconds)
        c1, t1 = sum(ps.cpu_times()[:2]), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    share = 100 * (c1 - c0) / (t1 - t0)
    print(f"run_monitor every {a.every:g} s: {c1 - c0:.3f} s of CPU in {t1 - t0:.1f} s = "
          f"{share:.2f} % of one core (target <= 1 %)")


if __name__ == "__main__":
    main()
