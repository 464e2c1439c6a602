from pathlib import Path

from apps.assembly import services
from apps.assembly.engine.component_extract import SelectionError
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Save chosen components of a model (layers 8-15, head…) as a component asset."
    creates = True
    user_errors = (*ForegroundCommand.user_errors, SelectionError)

    def add_arguments(self, parser):
        parser.add_argument("model", help="path or NAME[@VERSION]")
        parser.add_argument("--select", nargs="+", required=True,
                            help="'layers 8-15', 'head', 'embed', or component ids")
        parser.add_argument("--name")
        parser.add_argument("--out", help="also write the component folder here")

    def handle(self, *args, model, select, name, out, **opts):
        version = services.components_extract(model=model, select=select, name=name, owner=self.owner,
                                              out=Path(out).resolve() if out else None,
                                              reporter=self.progress("extract"))
        self.emit({"asset": version.asset.name, "version": version.number,
                   "components": [c["id"] for c in version.metadata["components"]]}, f"{version}")
