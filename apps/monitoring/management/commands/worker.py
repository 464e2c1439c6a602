"""`audobon worker [--queue heavy|light] [--device cuda:N] [--threads N]`: a worker started
by hand, on this machine or another one that shares the database, Redis and store path
(LAN mode). `audobon up` starts its own workers; this adds more, or puts one on a GPU box."""

from __future__ import annotations

import os
import re
import sys

from django.conf import settings
from django.core.management.base import CommandError

from apps.monitoring.management.commands.run_worker import Command as RunWorker
from audobon_site.queues import QUEUE_NAMES


class Command(RunWorker):
    help = "Run a worker for one queue here (another machine in LAN mode), optionally on one GPU."

    def add_arguments(self, parser):
        parser.add_argument("--queue", choices=QUEUE_NAMES, default="heavy",
                            help="the queue to consume (default heavy)")
        parser.add_argument("--device", default=None,
                            help="cpu, or cuda:N to run this worker's jobs on GPU N only")
        parser.add_argument("--threads", type=int, default=None,
                            help="jobs at once (default: heavy 1, light 4)")

    def handle(self, *args, queue: str, device: str | None, threads: int | None, **opts):
        if device:
            m = re.fullmatch(r"cuda:(\d+)|cpu", device)
            if not m:
                raise CommandError(f"--device {device!r}: give cpu or cuda:N (N a GPU index)")
            if "torch" in sys.modules:  # CUDA reads the variable once, when torch starts it
                raise CommandError("--device must be set before torch is loaded")
            os.environ["CUDA_VISIBLE_DEVICES"] = m.group(1) if m.group(1) is not None else ""
            # Which GPU of the machine this worker's jobs run on: where heavy jobs are placed.
            os.environ["AUDOBON_WORKER_DEVICE"] = device
        lan = settings.DATABASES["default"]["ENGINE"].endswith("postgresql") and os.environ.get(
            "AUDOBON_REDIS_URL")
        where = "sharing this LAN setup" if lan else "on the embedded default (this machine only)"
        self.stdout.write(f"starting a {queue} worker {where}"
                          + (f" on {device}" if device else ""))
        super().handle(*args, queue=queue, threads=threads, **opts)
