"""`audobon inspect_model PATH [--json]`: header-only, no weights read, no database.

`audobon` runs this command without loading the Django apps, so it answers in a fraction
of a second on any model (see audobon_site/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


class Command(BaseCommand):
    help = "Describe a model from its headers: architecture, parameters, dtypes, components."
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--json", action="store_true", dest="as_json",
                            help="the audobon.inspect/1 JSON document")

    def handle(self, *args, path: str, as_json: bool, **opts):
        from apps.registry.engine.header import HeaderError
        from apps.registry.engine.inspect import inspect_model

        try:
            report = inspect_model(Path(path).expanduser())
        except (HeaderError, OSError) as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            self.stdout.write(json.dumps(report, indent=1))
            return
        arch = report.get("architecture") or {}
        self.stdout.write(f"{report['path']}\n  format: {report.get('format')}\n"
                          f"  architecture: {arch.get('model_type')} {arch.get('architectures') or ''}\n"
                          f"  parameters: {_human(report.get('parameters') or 0)}  "
                          f"bytes: {_human(report.get('bytes') or 0)}B\n"
                          f"  dtypes: {report.get('dtypes')}")
        for comp in report.get("components", []):
            self.stdout.write(f"  {comp['id']:<28} {comp['kind']:<10} {_human(comp['params']):>8}  "
                              f"{comp['signature'][:12]}")
        for warning in report.get("warnings", []):
            self.stdout.write(self.style.WARNING(f"  warning: {warning}"))
