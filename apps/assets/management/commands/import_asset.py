from pathlib import Path

from apps.assets import services
from apps.assets.engine.errors import StoreError
from apps.assets.models import Asset
from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.services import job_submit


class Command(ForegroundCommand):
    help = "Import a file or folder into the library as a new asset version."
    creates = True
    user_errors = (*ForegroundCommand.user_errors, StoreError)

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--kind", required=True, choices=Asset.Kind.values)
        parser.add_argument("--name", help="asset name (default: the file or folder name)")
        parser.add_argument("--link", action="store_true",
                            help="hard-link or reflink instead of copying (same filesystem)")
        parser.add_argument("--tag", action="append", default=[], dest="tags")
        parser.add_argument("--description")
        parser.add_argument("--queue", action="store_true", help="run as a job in the workers")

    def handle(self, *args, path, kind, name, link, tags, description, queue, **opts):
        source = Path(path).expanduser().resolve()
        if queue:
            job = job_submit(kind="asset_import", spec={
                "source": str(source), "kind": kind, "name": name, "link": link,
                "tags": tags, "description": description}, owner=self.owner)
            self.emit({"job": job.pk, "status": job.status}, f"queued as job {job.pk}")
            return
        version = services.asset_import(source=source, kind=kind, name=name, link=link,
                                        tags=tags, description=description, owner=self.owner,
                                        reporter=self.progress(f"import {source.name}"))
        self.emit({"asset": version.asset.name, "version": version.number,
                   "version_id": str(version.pk), "files": len(version.manifest),
                   "bytes": version.size_bytes},
                  f"{version} ({len(version.manifest)} files, {version.size_bytes} bytes)")
