from pathlib import Path

from apps.assets import selectors, services
from apps.assets.engine.errors import StoreError
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Write an asset version's files into a new folder: NAME or NAME@VERSION."
    user_errors = (*ForegroundCommand.user_errors, StoreError)

    def add_arguments(self, parser):
        parser.add_argument("ref", metavar="NAME[@VERSION]")
        parser.add_argument("dir", help="a folder that does not exist yet")

    def handle(self, *args, ref, dir, **opts):
        version = selectors.asset_version_get(ref=ref)
        dest = Path(dir).expanduser().resolve()
        services.asset_version_export(version=version, dest=dest,
                                      reporter=self.progress(f"export {version}"))
        self.emit({"version": str(version), "dir": str(dest), "files": len(version.manifest)},
                  f"{version} written to {dest}")
