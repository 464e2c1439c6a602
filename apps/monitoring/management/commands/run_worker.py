"""One queue consumer: `audobon run_worker --queue heavy|light` (started by `audobon up`)."""

from __future__ import annotations

import os
import threading

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection
from django.utils import timezone

from apps.monitoring import services, tasks
from apps.monitoring.engine.supervisor import watch_parent
from audobon_site.queues import QUEUE_NAMES, QUEUES

DEFAULT_THREADS = {"heavy": 1, "light": 4}


class Command(BaseCommand):
    help = "Run a Huey consumer for one queue, with heartbeats and crash recovery."

    def add_arguments(self, parser):
        parser.add_argument("--queue", choices=QUEUE_NAMES, required=True)
        parser.add_argument("--threads", type=int, default=None,
                            help="jobs at once (default: heavy 1, light 4)")

    def handle(self, *args, queue: str, threads: int | None, **opts):
        watch_parent()
        worker_id = f"{services.HOSTNAME}:{os.getpid()}:{queue}"
        os.environ["AUDOBON_WORKER_ID"] = worker_id
        started = timezone.now()
        device = os.environ.get("AUDOBON_WORKER_DEVICE", "")
        services.jobs_interrupt_orphans()
        services.worker_heartbeat(worker_id=worker_id, queue=queue, started_at=started, device=device)
        stop = threading.Event()

        def beat():
            try:
                while not stop.wait(settings.AUDOBON_HEARTBEAT_SECONDS):
                    services.worker_heartbeat(worker_id=worker_id, queue=queue,
                                              started_at=started, device=device)
            finally:
                connection.close()

        threading.Thread(target=beat, daemon=True, name="worker-heartbeat").start()
        consumer = QUEUES[queue].create_consumer(
            workers=threads or DEFAULT_THREADS[queue], worker_type="thread", periodic=False,
            # An idle queue is polled at least 4 times a second, so a new job starts fast.
            initial_delay=0.05, backoff=1.5, max_delay=0.25,
        )
        self.stdout.write(f"worker {worker_id} consuming the {queue} queue"
                          + (f" on {device}" if device else ""))
        try:
            consumer.run()
        finally:
            stop.set()
            tasks.STOPPING.set()  # a job held waiting does not start now; worker_gone requeues it
            interrupted = services.worker_gone(worker_id=worker_id)
            if interrupted:
                self.stdout.write(f"worker {worker_id} stopped; interrupted jobs {interrupted}")
