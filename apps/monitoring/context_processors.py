"""What every page shows about the machine: a banner when disk in AUDOBON_HOME runs low or
a worker has stopped reporting. Two cheap reads a page (a disk figure and one query)."""

from __future__ import annotations

import shutil
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.monitoring.models import WorkerHeartbeat

LOW_DISK_BYTES = 5 * 2**30  # below this, new heavy work may not fit


def health_banners(request) -> dict:
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    banners = []
    free = shutil.disk_usage(settings.AUDOBON_HOME).free
    if free < LOW_DISK_BYTES:
        banners.append(f"Disk space is low: {free / 2**30:.1f} GiB free in {settings.AUDOBON_HOME}. "
                       "Empty the trash or collect unused blobs on the Storage page.")
    stale = timezone.now() - timedelta(seconds=settings.AUDOBON_WORKER_STALE_SECONDS)
    dead = list(WorkerHeartbeat.objects.filter(last_seen__lt=stale)
                .values_list("queue", "worker_id", "last_seen")[:5])
    if dead:
        alive = set(WorkerHeartbeat.objects.filter(last_seen__gte=stale).values_list("queue", flat=True))
    for queue, worker, last_seen in dead:
        then = timezone.localtime(last_seen).strftime("%H:%M:%S")
        banners.append(f"The {queue} worker {worker} stopped reporting at {then}: its jobs are marked "
                       "interrupted; "
                       + (f"another {queue} worker runs new ones." if queue in alive else
                          "restart `audobon up` (or `audobon worker`) to run new ones."))
    return {"health_banners": banners}
