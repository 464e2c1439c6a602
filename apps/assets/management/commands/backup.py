from pathlib import Path

from apps.assets import services
from apps.assets.engine.errors import StoreError
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Back the whole library up to one .tar file, verified after it is written."
    user_errors = (*ForegroundCommand.user_errors, StoreError)

    def add_arguments(self, parser):
        parser.add_argument("file")

    def handle(self, *args, file, **opts):
        backup = services.library_backup(dest=Path(file).resolve(), reporter=self.progress("backup"))
        self.emit({"path": backup.path, "blobs": backup.blobs, "bytes": backup.size_bytes,
                   "assets": backup.assets, "verified": backup.verified},
                  f"backed up {backup.assets} assets ({backup.blobs} blobs) to {backup.path}; verified")
