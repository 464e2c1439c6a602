"""Event latency: from the moment a worker records a JobEvent to the moment a websocket
client receives it, over 200 events, through a real `audobon up`.

    python benchmarks/event_latency.py            # embedded default: SQLite, consumer tails the table
    python benchmarks/event_latency.py --redis    # PostgreSQL + Redis: workers push via channels_redis

Targets: p95 <= 250 ms embedded, <= 50 ms with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

from _server import percentile, running_audobon, session_cookie

EVENTS = 200
EVENT_ID = re.compile(r'data-event-id="(\d+)"')


async def measure(up, cookie: str, job_id: int) -> dict[int, float]:
    import websockets

    received: dict[int, float] = {}
    url = f"ws://127.0.0.1:{up.port}/ws/jobs/{job_id}/?after=0"
    headers = {"Cookie": cookie, "Origin": up.base}
    async with websockets.connect(url, additional_headers=headers) as ws:
        first = await ws.recv()
        already = {int(i) for i in EVENT_ID.findall(first)}  # before we listened: not counted
        try:
            async for message in ws:
                now = time.time()
                for event_id in map(int, EVENT_ID.findall(message)):
                    if event_id not in already:
                        received.setdefault(event_id, now)
        except websockets.ConnectionClosedOK:
            pass
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", action="store_true", help="PostgreSQL + Redis (LAN mode)")
    args = parser.parse_args()
    with running_audobon(redis=args.redis) as up:
        from apps.monitoring import services
        from apps.monitoring.models import JobEvent

        cookie = session_cookie(up)
        # A selftest records a metric each step, plus logs and state changes: ~1.3 events
        # per step, 50 steps a second, so the stream is busy the whole time.
        job = services.job_submit(kind="selftest", spec={"steps": 260, "step_seconds": 0.02})
        received = asyncio.run(measure(up, cookie, job.pk))
        recorded = {e.pk: e.created_at.timestamp()
                    for e in JobEvent.objects.filter(pk__in=received)}
        measured = [(received[i] - recorded[i]) * 1000 for i in sorted(received)][:EVENTS]
        mode = "redis" if args.redis else "embedded"
        target = 50 if args.redis else 250
        p50, p95 = percentile(measured, 50), percentile(measured, 95)
        print(f"event latency ({mode}, {len(measured)} events): "
              f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(measured):.1f} ms "
              f"(target p95 <= {target} ms: {'met' if p95 <= target else 'MISSED'})")


if __name__ == "__main__":
    main()
