"""`audobon serve`: daphne on the ASGI app (started by `audobon up`)."""

from __future__ import annotations

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.monitoring.engine.supervisor import watch_parent
from audobon_site.first_use import migrate_if_fresh
from audobon_site.hosts import HostRefused, bind_plan

NO_TLS_NOTE = ("audobon serve: serving the network without TLS: passwords and sessions cross it "
               "in clear. Put a TLS proxy in front and set AUDOBON_TLS=1 (README, LAN mode).")


class Command(BaseCommand):
    help = "Serve HTTP and websockets with daphne."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, host: str, port: int, **opts):
        # The same rule as `audobon up`, checked before anything is bound.
        try:
            plan = bind_plan(host)
        except HostRefused as exc:
            raise CommandError(str(exc)) from None
        # Accept the address listened on (127.0.0.2, a LAN address) as a Host header; set
        # before daphne imports the ASGI app, whose websocket origin check reads it.
        settings.ALLOWED_HOSTS = list(dict.fromkeys([*settings.ALLOWED_HOSTS, *plan.allowed_hosts]))
        if plan.lan and not settings.AUDOBON_TLS:
            self.stderr.write(NO_TLS_NOTE)
        migrate_if_fresh(self.stderr)
        watch_parent()
        # Requests go to a log file, not the terminal `audobon up` talks to the user on.
        access_log = settings.AUDOBON_HOME / "logs" / "access.log"
        CommandLineInterface().run(["-b", plan.host, "-p", str(port), "--access-log", str(access_log),
                                    "audobon_site.asgi:application"])
