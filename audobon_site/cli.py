"""The `audobon` command: every manage.py command, plus `audobon up`."""

from __future__ import annotations

import os
import sys

# Commands that must not set up the database first: those about migrations and checks
# themselves, those that need no database, and `up` and `serve`, which check their
# --host before anything else and migrate afterwards.
NO_FIRST_USE_MIGRATE = frozenset({
    "help", "version", "--help", "-h", "--version", "check", "diffsettings",
    "migrate", "makemigrations", "showmigrations", "sqlmigrate", "squashmigrations",
    "optimizemigration", "sqlflush", "sqlsequencereset", "dbshell", "collectstatic",
    "findstatic", "startapp", "startproject", "compilemessages", "makemessages",
    "sendtestemail", "test", "testserver", "up", "serve", "inspect_model",
})


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
        if _migrates_first(args):
            from audobon_site.first_use import migrate_if_fresh

            migrate_if_fresh()
        execute_from_command_line(["audobon", *(args or ["help"])])
    except Exception as exc:
        from audobon_site.first_use import database_problem

        problem = database_problem(exc)
        if problem is None:
            raise
        sys.stderr.write(f"audobon: {problem}\n")
        sys.exit(1)


def _migrates_first(args: list[str]) -> bool:
    """A known command that uses the database, not asked only for its help."""
    if not args or args[0] in NO_FIRST_USE_MIGRATE or any(a in ("-h", "--help") for a in args):
        return False
    import django
    from django.core.management import get_commands

    django.setup()
    return args[0] in get_commands()


if __name__ == "__main__":
    main()
