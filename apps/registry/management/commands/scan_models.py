from pathlib import Path

from apps.monitoring.foreground import ForegroundCommand
from apps.registry import services


class Command(ForegroundCommand):
    help = "Find models in folders (and the Hugging Face cache) and register them."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="*", help="folders (default: every known root)")

    def handle(self, *args, paths, **opts):
        result = services.scan_models(paths=[Path(p) for p in paths] or None,
                                      reporter=self.progress("scan"))
        lines = [f"{result['found']} models in {len(result['roots'])} roots: "
                 f"{result['inspected']} inspected, {result['unchanged']} unchanged, "
                 f"{result['missing']} gone"]
        lines += [f"  error: {e['error']}" for e in result["errors"]]
        self.emit(result, "\n".join(lines))
