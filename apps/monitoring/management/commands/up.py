"""`audobon up`: migrate, make sure an admin exists, start daphne, the heavy and light
workers and the resource monitor under one supervisor, and open the browser logged in."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import webbrowser

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.monitoring import services
from apps.monitoring.engine.supervisor import ChildSpec, Supervisor
from apps.monitoring.startup import run_startup_hooks
from audobon_site.hosts import BindPlan, HostRefused, bind_plan
from audobon_site.login_links import login_link_path

READY_TIMEOUT_S = 120


def check_port_free(host: str, port: int) -> None:
    """Bind the web port once, before any child starts, so a port in use is reported
    clearly and leaves nothing behind."""
    addr = "127.0.0.1" if host == "localhost" else host.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(
                f"port {port} on {addr} is already in use; stop what is using it or pick "
                f"another with --port"
            ) from None
        raise CommandError(f"cannot listen on {addr}:{port}: {exc.strerror}") from None
    sock.close()


class Command(BaseCommand):
    help = "Run Audobon: web server, heavy and light workers, resource monitor."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-browser", action="store_true",
                            help="print the login link instead of opening a browser")

    def handle(self, *args, host: str, port: int, no_browser: bool, **opts):
        logging.basicConfig(level=logging.INFO, format="audobon up: %(message)s")
        # The host rule (audobon_site/hosts.py) before anything is migrated, started or bound.
        try:
            plan = bind_plan(host)
        except HostRefused as exc:
            raise CommandError(str(exc)) from None
        check_port_free(plan.host, port)
        started = time.monotonic()
        call_command("migrate", interactive=False, verbosity=0)
        user, password = services.admin_ensure()
        interrupted = services.jobs_interrupt_orphans()
        for label, result in run_startup_hooks():
            if result:
                self.stdout.write(f"{label}: {result}")
        # Probed here over plain http on the address listened on; shown to people by name,
        # and with AUDOBON_TLS through the TLS proxy in front (on https's own port).
        probe = f"http://{plan.probe_host}:{port}"
        base = f"https://{plan.link_host}" if settings.AUDOBON_TLS else f"http://{plan.link_host}:{port}"
        link = base + login_link_path(user)
        connection.close()

        out = self.stdout
        out.write(f"Audobon home: {settings.AUDOBON_HOME}")
        if password:
            out.write(f"Created the administrator '{user.get_username()}' with password: "
                      f"{password}\n  (shown this once; change it at {base}/admin/password_change/)")
        if interrupted:
            out.write(f"Jobs left running by a stopped worker are now interrupted: {interrupted}")

        sup = Supervisor(self._children(plan, port))
        sup.start()
        try:
            ready = self._wait_ready(sup, probe)
        except KeyboardInterrupt:
            sup.stop()
            return
        if ready:
            out.write(f"Audobon is ready at {base}/ ({time.monotonic() - started:.1f}s)")
        else:
            out.write(f"Audobon did not report healthy within {READY_TIMEOUT_S}s; see {base}/healthz")
        out.write(f"One-time login link: {link}")
        out.write("Press Ctrl-C to stop.")
        sys.stdout.flush()
        if not no_browser:
            webbrowser.open(link)
        sup.run_forever()

    def _children(self, plan: BindPlan, port: int) -> list[ChildSpec]:
        py = [sys.executable, "-m", "audobon_site.cli"]
        children = [
            ChildSpec("web", [*py, "serve", "--host", plan.host, "--port", str(port)]),
            ChildSpec("light-worker", [*py, "run_worker", "--queue", "light"]),
            ChildSpec("monitor", [*py, "run_monitor"]),
        ]
        devices = [d.strip() for d in os.environ.get("AUDOBON_DEVICES", "").split(",") if d.strip()]
        if devices:
            # One heavy worker per GPU, each seeing only its own device and knowing which it is
            # (by the machine's numbering), so a job goes to the worker whose GPU it fits on.
            for dev in devices:
                env = {"CUDA_VISIBLE_DEVICES": dev}
                if dev.isdigit():
                    env["AUDOBON_WORKER_DEVICE"] = f"cuda:{dev}"
                children.append(ChildSpec(f"heavy-worker-{dev}", [*py, "run_worker", "--queue", "heavy"],
                                          env=env))
        else:
            children.append(ChildSpec("heavy-worker", [*py, "run_worker", "--queue", "heavy"]))
        return children

    def _wait_ready(self, sup: Supervisor, base: str) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            sup.check()
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:  # noqa: S310
                    if json.load(resp).get("status") == "ok":
                        return True
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        return False
