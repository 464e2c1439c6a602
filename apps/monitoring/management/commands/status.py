"""`audobon status [--json]`: health, queues, workers and resources at a glance."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from apps.monitoring import selectors


def status_report() -> dict:
    health = selectors.health_report()
    # Every queue, with whether it is paused (`audobon queue pause|resume`).
    queues = {q["name"]: {"queued": q["queued"], "running": q["running"], "paused": q["paused"]}
              for q in selectors.queues_summary()}
    sample = selectors.resource_latest()
    resources = None
    if sample is not None:
        resources = {"at": sample.created_at.isoformat(), "cpu_percent": sample.cpu_percent,
                     "ram_used": sample.ram_used, "ram_total": sample.ram_total,
                     "disk_free": sample.disk_free, "disk_total": sample.disk_total, "gpus": sample.gpus}
    parts = {k: v for k, v in health.items() if isinstance(v, dict)}
    return {"health": {"status": health["status"], **{k: v["ok"] for k, v in parts.items()}},
            "queues": queues, "workers": health["workers"]["workers"], "resources": resources}


def _gb(n) -> str:
    return f"{n / 1e9:.1f} GB"


class Command(BaseCommand):
    help = "Health, queues, workers and resources at a glance."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object")

    def handle(self, *args, as_json: bool, **opts):
        report = status_report()
        if as_json:
            self.stdout.write(json.dumps(report, default=str))
            return
        h = report["health"]
        lines = [f"health: {h['status']} (" + ", ".join(f"{k} {'ok' if v else 'FAILING'}"
                                                      for k, v in h.items() if k != "status") + ")"]
        if any(c["queued"] or c["running"] or c["paused"] for c in report["queues"].values()):
            lines += [f"queue {q}: {c['queued']} queued, {c['running']} running"
                      + (" (PAUSED: `audobon queue resume " + q + "`)" if c["paused"] else "")
                      for q, c in sorted(report["queues"].items())]
        else:
            lines.append("queues: nothing queued or running")
        lines += [f"worker {w['id']} ({w['queue']}): {'alive' if w['alive'] else 'DEAD'}, "
                  f"seen {w['age_s']} s ago" for w in report["workers"]] \
            or ["workers: none running (start them with `audobon up`)"]
        r = report["resources"]
        if r:
            lines.append(f"resources at {r['at']}: CPU {r['cpu_percent']:.0f}%, RAM {_gb(r['ram_used'])} of "
                         f"{_gb(r['ram_total'])}, disk free {_gb(r['disk_free'])} of {_gb(r['disk_total'])}"
                         + "".join(f", GPU {g.get('index')} {g.get('util_percent')}% busy, "
                                   f"{g.get('mem_used_mb')} of {g.get('mem_total_mb')} MB"
                                   for g in r["gpus"] or []))
        else:
            lines.append("resources: no sample yet (the monitor samples while `audobon up` runs)")
        self.stdout.write("\n".join(lines))
