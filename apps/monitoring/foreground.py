"""Base for commands that do a job's work in the foreground: a progress bar on stderr,
`--json` for scripts, and user errors turned into a clear message and exit code 1."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from apps.monitoring.engine.reporter import JobCancelled
from apps.monitoring.engine.terminal import TerminalProgress
from audobon_site.access import acting_as, add_owner_argument, owner_from_options


class ForegroundCommand(BaseCommand):
    # Exceptions whose message is meant for the user; anything else is a bug and keeps
    # its traceback.
    user_errors: tuple[type[Exception], ...] = (ValueError, LookupError, OSError)
    # A command that makes things (assets, jobs, runs) takes `--owner USERNAME`; `self.owner`
    # is whom it acts for (see audobon_site.access.command_owner).
    creates = False
    owner = None

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument("--json", action="store_true", dest="as_json",
                            help="print the result as one JSON object")
        if self.creates:
            add_owner_argument(parser)
        return parser

    def execute(self, *args, **options):
        self.as_json = options.get("as_json", False)
        try:
            if not self.creates:
                return super().execute(*args, **options)
            # Names resolve as the owner sees the library (everything for the only admin).
            self.owner = owner_from_options(options)
            with acting_as(self.owner):
                return super().execute(*args, **options)
        except JobCancelled:
            raise CommandError("cancelled") from None
        except CommandError:
            raise
        except self.user_errors as exc:
            raise CommandError(str(exc)) from None

    def progress(self, label: str) -> TerminalProgress:
        return TerminalProgress(label=label, stream=self.stderr._out)

    def emit(self, result: dict, text: str) -> None:
        self.stdout.write(json.dumps(result, default=str) if self.as_json else text)
