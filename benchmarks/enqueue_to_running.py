"""Enqueue to running: how long a selftest waits on an idle queue before a worker starts it
(Job.created_at, set on submit, to Job.started_at, set by the worker), through a real
`audobon up`. Each job is submitted only after the previous one ended, so the queue is
idle every time.

    python benchmarks/enqueue_to_running.py [--jobs 40] [--queue light|heavy] [--redis]

Target: p95 <= 1 s.
"""

from __future__ import annotations

import argparse
import time

from _server import percentile, running_audobon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--queue", choices=["light", "heavy"], default="light")
    parser.add_argument("--redis", action="store_true", help="PostgreSQL + Redis (LAN mode)")
    args = parser.parse_args()
    with running_audobon(redis=args.redis) as up:  # noqa: F841 - keeps the server running
        from apps.monitoring import services

        waits = []
        for _ in range(args.jobs):
            job = services.job_submit(kind="selftest",
                                      spec={"steps": 1, "step_seconds": 0, "queue": args.queue})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                job.refresh_from_db()
                if job.is_finished:
                    break
                time.sleep(0.02)
            if job.started_at is None:
                raise SystemExit(f"job {job.pk} never started ({job.status})")
            waits.append((job.started_at - job.created_at).total_seconds() * 1000)
            time.sleep(0.3)  # let the consumer back off to its idle polling rate
        p50, p95 = percentile(waits, 50), percentile(waits, 95)
        mode = "redis" if args.redis else "embedded"
        print(f"enqueue -> running ({mode}, {args.queue} queue, {len(waits)} jobs): "
              f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(waits):.0f} ms "
              f"(target p95 <= 1000 ms: {'met' if p95 <= 1000 else 'MISSED'})")


if __name__ == "__main__":
    main()
