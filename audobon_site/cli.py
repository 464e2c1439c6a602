"""The `audobon` command: every manage.py command, plus `audobon up`."""

from __future__ import annotations

import contextlib
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


# Commands whose engine runs in a child that imports torch while the parent sets up Django
# (apps.monitoring.engine.preload), with the modules it imports first; not for their help,
# a dry run or a job sent to the queue, which need no torch.
ENGINE_PROCESS = {
    "assemble": ("torch", "apps.assembly.engine.executor", "apps.assembly.engine.validation"),
}
NO_ENGINE_FLAGS = frozenset({"-h", "--help", "--dry-run", "--queue"})


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audobon_site.settings")
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None and args and args[0] in ENGINE_PROCESS and not NO_ENGINE_FLAGS & set(args):
        # First, before anything else is imported or any thread runs: the child is forked.
        from apps.monitoring.engine.preload import EngineProcess

        EngineProcess.start(ENGINE_PROCESS[args[0]])
    from django.core.management import execute_from_command_line

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


def run() -> None:
    """The console script: `main`, then a quick exit. Once the command is done and its output
    flushed, tearing down the interpreter module by module (torch's alone takes about half a
    second) only delays the shell; the exit handlers and the wait for running threads still
    happen, as in a normal exit."""
    import atexit
    import threading

    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            sys.stderr.write(f"{exc.code}\n")
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    threading._shutdown()  # joins non-daemon threads, as the interpreter does at exit
    atexit._run_exitfuncs()
    if "django.db" in sys.modules:  # a command that used the database: close it cleanly
        from django.db import connections

        with contextlib.suppress(Exception):
            connections.close_all()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)


def _migrates_first(args: list[str]) -> bool:
    """A known command that uses the database, not asked only for its help."""
    if not args or args[0] in NO_FIRST_USE_MIGRATE or any(a in ("-h", "--help") for a in args):
        return False
    import django
    from django.core.management import get_commands

    django.setup()
    return args[0] in get_commands()


if __name__ == "__main__":
    run()
