"""`audobon queue pause|resume NAME`, `audobon queue list [--json]`: stop a queue's workers
from starting new jobs (running ones finish) and let them go on again."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from apps.monitoring import selectors, services


class Command(BaseCommand):
    help = ("Pause or resume a queue (its running jobs finish; queued ones keep their places), "
            "or list the queues.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        for name, text in (("pause", "start no new job from this queue"),
                           ("resume", "start this queue's jobs again")):
            p = sub.add_parser(name, help=text)
            p.add_argument("name", metavar="NAME", help="the queue: heavy or light")
            p.add_argument("--json", action="store_true", dest="as_json")
        p = sub.add_parser("list", help="each queue: paused or running, its queued and running jobs")
        p.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, action: str, as_json: bool, name: str = "", **opts):
        if action in ("pause", "resume"):
            change = services.queue_pause if action == "pause" else services.queue_resume
            try:
                change(name=name)
            except services.UnknownQueue as exc:
                raise CommandError(str(exc)) from None
        queues = selectors.queues_summary()
        if as_json:
            shown = queues if action == "list" else next(q for q in queues if q["name"] == name)
            self.stdout.write(json.dumps(shown))
            return
        if action != "list":
            q = next(q for q in queues if q["name"] == name)
            self.stdout.write(f"queue {name}: {'paused' if q['paused'] else 'running'} "
                              f"({q['queued']} queued, {q['running']} running)")
            return
        for q in queues:
            self.stdout.write(f"{q['name']:<6} {'paused' if q['paused'] else 'running':<8} "
                              f"{q['queued']} queued, {q['running']} running")
