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
    try:
        execute_from_command_line(["audobon", *(args or ["help"])])
    except Exception as exc:
        if not _unmigrated(exc):
            raise
        from django.conf import settings

        sys.stderr.write(f"audobon: the database of {settings.AUDOBON_HOME} has no tables yet; "
                         "run `audobon migrate` (or `audobon up`, which migrates) first\n")
        sys.exit(1)


def _unmigrated(exc: BaseException) -> bool:
    """A command run on a home whose database was never migrated (SQLite or PostgreSQL)."""
    from django.db.utils import OperationalError, ProgrammingError

    text = str(exc)
    return (isinstance(exc, OperationalError) and text.startswith("no such table")) or (
        isinstance(exc, ProgrammingError) and "does not exist" in text and "relation" in text)


if __name__ == "__main__":
    main()
