from pathlib import Path

from apps.monitoring.foreground import ForegroundCommand
from apps.registry import services
from apps.registry.models import DiscoveredModel


class Command(ForegroundCommand):
    help = "Find models in folders (and the Hugging Face cache) and register them."

    creates = True
    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="*", help="folders (default: every known root)")
        parser.add_argument("--import", action="store_true", dest="import_",
                            help="also import the new or changed models into the store")
        parser.add_argument("--link", action="store_true", help="with --import: hard-link or reflink")

    def handle(self, *args, paths, import_, link, **opts):
        result = services.scan_models(paths=[Path(p) for p in paths] or None, owner=self.owner,
                                      reporter=self.progress("scan"))
        if import_:
            for model in DiscoveredModel.objects.filter(pk__in=result["registered"]):
                services.model_import(model=model, link=link, owner=self.owner,
                                      reporter=self.progress(f"import {model}"))
        lines = [f"{result['found']} models in {len(result['roots'])} roots: "
                 f"{result['inspected']} inspected, {result['unchanged']} unchanged, "
                 f"{result['missing']} gone"]
        lines += [f"  error: {e['error']}" for e in result["errors"]]
        self.emit(result, "\n".join(lines))
