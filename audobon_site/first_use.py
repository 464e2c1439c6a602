"""A command on a fresh home: set up its database on first use, and turn the errors of
a database that is missing, unreachable or behind this version into one line that says
what to do."""

from __future__ import annotations

import contextlib
import fcntl
import sys
from typing import TextIO

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.utils import OperationalError, ProgrammingError

LOCK_FILE = ".migrate.lock"
PG_LOCK_KEY = 0x61756462  # "audb": any constant other apps on the server are unlikely to use


def database_is_fresh() -> bool:
    """True when no migration was ever applied (no django_migrations table)."""
    return "django_migrations" not in connection.introspection.table_names()


def migrate_if_fresh(stream: TextIO | None = None) -> bool:
    """Apply the migrations to a database that has none yet; say so in one line.

    Two commands started together on a fresh home take turns on a lock in the home (and,
    on PostgreSQL, where workers on other machines share the database, on an advisory
    lock), so only one of them migrates."""
    if not database_is_fresh():
        return False
    with _migration_lock():
        if not database_is_fresh():
            return False
        (stream or sys.stderr).write(
            f"audobon: first use of {settings.AUDOBON_HOME}: setting up its database\n")
        call_command("migrate", interactive=False, verbosity=0)
    return True


@contextlib.contextmanager
def _migration_lock():
    with open(settings.AUDOBON_HOME / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if connection.vendor == "postgresql":
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_advisory_lock(%s)", [PG_LOCK_KEY])
                try:
                    yield
                finally:
                    with connection.cursor() as cur:
                        cur.execute("SELECT pg_advisory_unlock(%s)", [PG_LOCK_KEY])
            else:
                yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def database_problem(exc: BaseException) -> str | None:
    """The one line to print for an expected database error, or None for a bug."""
    if not isinstance(exc, OperationalError | ProgrammingError):
        return None
    where = _where()
    if _unreachable(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot reach the database {where}: {first}"
    if _pending_migrations() or _looks_unmigrated(exc):
        return (f"the database {where} is not set up for this version of Audobon; "
                "run `audobon migrate` (or `audobon up`, which migrates) first")
    return None


def _where() -> str:
    if connection.vendor == "sqlite":
        return f"of {settings.AUDOBON_HOME}"
    db = settings.DATABASES["default"]
    return f"{db.get('NAME', '')} on {db.get('HOST') or 'localhost'}"


def _unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, OperationalError) and any(s in text for s in (
        "connection refused", "could not connect", "connection failed", "unable to open database",
        "could not translate host name", "timeout expired", "no route to host",
        "password authentication failed",
    ))


def _looks_unmigrated(exc: BaseException) -> bool:
    text = str(exc)
    return (text.startswith(("no such table", "no such column"))
            or ("does not exist" in text and ("relation" in text or "column" in text)))


def _pending_migrations() -> bool:
    from django.db.migrations.executor import MigrationExecutor

    with contextlib.suppress(Exception):
        connection.close()  # a failed transaction on PostgreSQL must not block the look
    try:
        executor = MigrationExecutor(connection)
        return bool(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    except Exception:
        return False
