"""The dashboard with a week of resource samples, as a user meets it: a fresh home holding
what the monitor keeps after a week at a 2 s interval (the last hour raw, 1,800 rows; one
row of means a minute before that, about 10,000 rows), the dashboard page requested
logged in, through Django's test client, many times. Prints p50 and p95.

    python benchmarks/dashboard_p95.py [--requests 60]

Target: p95 <= 100 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=60)
    a = p.parse_args()
    os.environ["AUDOBON_HOME"] = tempfile.mkdtemp(prefix="dashboard-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audobon_site.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from apps.monitoring.models import ResourceSample

    call_command("migrate", verbosity=0)
    now = timezone.now()
    gpus = [{"index": 0, "name": "g", "util_percent": 40.0, "mem_used_mb": 1000.0, "mem_total_mb": 8000.0,
             "temp_c": 55.0}]
    rows = [ResourceSample(created_at=now - timedelta(seconds=2 * i), cpu_percent=float(i % 100),
                           ram_used=(4 + i % 8) * 2**30, ram_total=16 * 2**30, disk_free=100 * 2**30,
                           disk_total=200 * 2**30, gpus=gpus) for i in range(1800)]
    rows += [ResourceSample(created_at=now - timedelta(hours=1, minutes=m), resolution=60,
                            cpu_percent=float(m % 100), ram_used=(4 + m % 8) * 2**30, ram_total=16 * 2**30,
                            disk_free=100 * 2**30, disk_total=200 * 2**30, gpus=gpus)
             for m in range(7 * 24 * 60 - 60)]
    ResourceSample.objects.bulk_create(rows, batch_size=2000)
    user = get_user_model().objects.create_user(username="bench", password="pw-bench-123456")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    assert client.get("/").status_code == 200  # warm: templates, the first query plans
    times = []
    for _ in range(a.requests):
        t0 = time.perf_counter()
        resp = client.get("/")
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    print(f"dashboard with {ResourceSample.objects.count():,} samples (a week): "
          f"p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms over {a.requests} requests "
          f"(target p95 <= 100 ms)")


if __name__ == "__main__":
    main()
