"""The `audobon` command: every manage.py command, plus `audobon up`."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audobon_site.settings")
    from django.core.management import execute_from_command_line

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["inspect_model"]:
        # Header-only and database-free: skip loading the apps, answer in well under a second.
        from apps.registry.management.commands.inspect_model import Command

        Command().run_from_argv(["audobon", *args])
        return
    execute_from_command_line(["audobon", *(args or ["help"])])


if __name__ == "__main__":
    main()
