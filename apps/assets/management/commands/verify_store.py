from django.core.management.base import CommandError

from apps.assets import services
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Re-hash every blob the library uses; report corrupt and missing ones."

    def handle(self, *args, **opts):
        report, affected = services.store_verify(reporter=self.progress("verify"))
        ok = report.ok and not affected
        result = {"ok": ok, "checked": report.checked, "bytes": report.bytes,
                  "corrupt": report.corrupt, "missing": report.missing, "affected": affected}
        lines = [f"checked {report.checked} blobs, {report.bytes} bytes"]
        lines += [f"corrupt: {s}" for s in report.corrupt] + [f"missing: {s}" for s in report.missing]
        lines += [f"  {a['version']}: {', '.join(a['files'])}"
                  + (f" (gone from {a['location']})" if a.get("location") else "") for a in affected]
        self.emit(result, "\n".join(lines))
        if not ok:
            raise CommandError("the library is damaged: see above", returncode=1)
