"""The two Huey queues.

heavy: GPU and model work, one job at a time per device.
light: I/O, inspection and bookkeeping, several at once.
They are separate queues with separate consumers, so a long fine-tune never
delays an ingest. Embedded default: SqliteHuey in $AUDOBON_HOME/queue.db;
with AUDOBON_REDIS_URL: PriorityRedisHuey.
"""

from __future__ import annotations

from django.conf import settings
from huey import PriorityRedisHuey, SqliteHuey

QUEUE_NAMES = ("heavy", "light")


def _make(name: str):
    common = {"immediate": settings.AUDOBON_QUEUE_IMMEDIATE, "results": False}
    if settings.REDIS_URL:
        return PriorityRedisHuey(f"audobon-{name}", url=settings.REDIS_URL, **common)
    return SqliteHuey(name, filename=str(settings.AUDOBON_QUEUE_FILE), timeout=30, **common)


QUEUES = {name: _make(name) for name in QUEUE_NAMES}


def queue_backend() -> str:
    return "redis" if settings.REDIS_URL else "sqlite"
