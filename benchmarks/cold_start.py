"""`audobon up` from a cold start to /healthz answering OK (database, queue and a live
worker on each queue), in seconds: first on a new AUDOBON_HOME (migrations, admin
account), then again on the same home. The baseline, measured in the same run, is a bare
`python -c "import django; django.setup()"` of the same settings: the part of start-up
that is only Python and Django.

    python benchmarks/cold_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _server import REPO, Up, audobon_env


def until_healthy(up: Up, timeout: float = 120) -> float:
    """Seconds from spawning `audobon up` to the first /healthz that says ok."""
    import json

    started = time.monotonic()
    up.proc = subprocess.Popen(
        [sys.executable, "-m", "audobon_site.cli", "up", "--no-browser", "--port", str(up.port)],
        env=up.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"{up.base}/healthz", timeout=2) as resp:
                if json.load(resp).get("ok"):
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("audobon up did not become healthy")


def django_setup_seconds(env: dict) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env, cwd=REPO,
                   check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    first, again, baseline = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="audobon-bench-") as tmp:
            home = Path(tmp) / "home"
            env = audobon_env(home)
            baseline.append(django_setup_seconds(env))
            for bucket in (first, again):
                up = Up(home, env=env)
                try:
                    bucket.append(until_healthy(up))
                finally:
                    up.stop()
    base = statistics.median(baseline)
    for label, values in (("new home", first), ("existing home", again)):
        med = statistics.median(values)
        print(f"audobon up -> /healthz ok, {label}: median {med:.2f} s over {len(values)} runs "
              f"({med / base:.1f}x a bare django.setup() of {base:.2f} s)")


if __name__ == "__main__":
    main()
