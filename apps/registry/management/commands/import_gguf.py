"""`audobon import_gguf FILE [--name N] [--dtype D] [--queue] [--json]`."""

from pathlib import Path

from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.services import job_submit
from apps.registry import services


class Command(ForegroundCommand):
    help = ("Dequantize a GGUF file (llama.cpp) once into a safetensors model in the library, "
            "and list it in the registry.")
    creates = True
    user_errors = (*ForegroundCommand.user_errors, services.HeaderError)

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE", help="a .gguf file")
        parser.add_argument("--name", help="asset name (default: the file name without its "
                                           "quantization suffix)")
        parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                            help="dtype of the written weights (default float32: exactly what "
                                 "the GGUF dequantizes to)")
        parser.add_argument("--queue", action="store_true", help="run as a job in the heavy worker")

    def handle(self, *args, file, name, dtype, queue, **opts):
        source, _ = services.gguf_check(Path(file))  # a bad file is refused before queueing
        if queue:
            job = job_submit(kind="import_gguf", spec={"path": str(source), "name": name,
                                                       "dtype": dtype}, owner=self.owner)
            self.emit({"job": job.pk, "status": job.status}, f"queued as job {job.pk}")
            return
        version = services.gguf_import(path=source, name=name, dtype=dtype, owner=self.owner,
                                       reporter=self.progress(f"import {source.name}"))
        gguf = version.metadata["gguf"]
        self.emit({"asset": version.asset.name, "version": version.number,
                   "version_id": str(version.pk), "bytes": version.size_bytes,
                   "dtype": version.metadata["dtype"], "gguf": gguf,
                   "verified": version.metadata["verified"],
                   "parents": [str(p) for p in version.parents.all()]},
                  f"{version}: {gguf['architecture']}, {gguf['parameters']} parameters, "
                  f"{version.size_bytes / 1e6:.0f} MB of {version.metadata['dtype']} "
                  f"(from {gguf['file']}, {gguf['file_type']}, sha256 {gguf['sha256'][:12]})")
