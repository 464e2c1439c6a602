"""`audobon serve`: daphne on the ASGI app (started by `audobon up`)."""

from __future__ import annotations

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand

from apps.monitoring.engine.supervisor import watch_parent


class Command(BaseCommand):
    help = "Serve HTTP and websockets with daphne."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, host: str, port: int, **opts):
        watch_parent()
        # Requests go to a log file, not the terminal `audobon up` talks to the user on.
        access_log = settings.AUDOBON_HOME / "logs" / "access.log"
        CommandLineInterface().run(["-b", host, "-p", str(port), "--access-log", str(access_log),
                                    "audobon_site.asgi:application"])
