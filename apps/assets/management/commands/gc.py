from apps.assets import services
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Show (or with --execute, free) the blobs no version uses."

    def add_arguments(self, parser):
        parser.add_argument("--execute", action="store_true", help="delete them (default: plan only)")

    def handle(self, *args, execute, **opts):
        result = services.store_gc(execute=execute)
        text = (f"freed {result['freed_bytes']} bytes in {result['blobs']} blobs" if execute else
                f"would free {result['bytes']} bytes in {result['blobs']} blobs "
                f"(run with --execute to delete them)")
        self.emit(result, text)
