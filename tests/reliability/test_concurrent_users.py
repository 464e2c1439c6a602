"""20 people on one Audobon for 60 s: no errors, and nobody sees another's private work.

Runs `benchmarks/concurrent_users.py` (a real `audobon up`, 20 accounts logged in over HTTP
on loopback, browsing, searching, downloading and starting jobs) and checks what it
counted. The p95 latency is printed, not asserted: timing targets live in benchmarks.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.proc import REPO


def test_twenty_users_for_a_minute_see_only_their_own_and_shared_work(capsys):
    done = subprocess.run([sys.executable, "benchmarks/concurrent_users.py", "--users", "20",
                           "--seconds", "60", "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1])
    with capsys.disabled():
        print(f"\n20 users, 60 s: {result['requests']} requests, p95 {result['p95_ms']} ms, "
              f"{result['errors']} errors, {result['leaks']} leaks")
    assert result["leaks"] == 0, result["first_leaks"]
    assert result["errors"] == 0, result["first_errors"]
    assert result["requests"] > 100 and result["jobs_started"] > 0
    assert done.returncode == 0
