from pathlib import Path

from apps.assets import services
from apps.assets.engine.errors import StoreError
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Restore a backup file into this library (empty or not; safe to repeat)."
    user_errors = (*ForegroundCommand.user_errors, StoreError)

    def add_arguments(self, parser):
        parser.add_argument("file")

    def handle(self, *args, file, **opts):
        result = services.library_restore(path=Path(file).resolve(), reporter=self.progress("restore"))
        self.emit(result, f"restored {result['assets_added']} new assets and "
                          f"{result['versions_added']} new versions "
                          f"({result['assets_in_backup']} assets in the backup)")
