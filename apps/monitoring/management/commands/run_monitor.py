"""`audobon run_monitor`: resource samples every few seconds, and the sweep that marks
jobs of dead workers as interrupted (started by `audobon up`)."""

from __future__ import annotations

import signal
import threading

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand

from apps.monitoring import services
from apps.monitoring.engine.resources import read_resources
from apps.monitoring.engine.supervisor import watch_parent


class Command(BaseCommand):
    help = "Sample CPU, RAM, disk and GPU into the database and sweep orphaned jobs."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=None,
                            help="seconds between samples (default AUDOBON_SAMPLE_SECONDS)")
        parser.add_argument("--once", action="store_true", help="take one sample and exit")

    def handle(self, *args, every: float | None, once: bool, **opts):
        watch_parent()
        interval = every or settings.AUDOBON_SAMPLE_SECONDS
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        psutil.cpu_percent(interval=None)  # the first reading only starts the clock
        while True:
            stop.wait(0 if once else interval)
            if stop.is_set():
                break
            services.resource_sample_record(reading=read_resources(settings.AUDOBON_HOME))
            services.jobs_interrupt_orphans()
            if once:
                break
