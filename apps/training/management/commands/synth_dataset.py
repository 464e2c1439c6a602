from pathlib import Path

from apps.assets.services import AssetInputError
from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.services import job_submit
from apps.training.engine.synth import MAX_SPEC_BYTES, SynthError, spec_load_yaml
from apps.training.services import synth as services


class Command(ForegroundCommand):
    help = "Generate a synthetic chat dataset from a spec (self-instruct with a model, or templates)."
    creates = True
    user_errors = (*ForegroundCommand.user_errors, SynthError, AssetInputError)

    def add_arguments(self, parser):
        parser.add_argument("spec", help="the spec's YAML file")
        parser.add_argument("--queue", action="store_true", help="run as a job in the heavy worker")

    def handle(self, *args, spec, queue, **opts):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: no such spec file")
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise ValueError(f"{path}: larger than {MAX_SPEC_BYTES // 1_000_000} MB; not a spec")
        parsed = spec_load_yaml(path.read_bytes(), source=path.name, defaults={"name": path.stem})
        if queue:
            job = job_submit(kind="synth_dataset", spec=parsed.model_dump(mode="json"), owner=self.owner)
            self.emit({"job": job.pk}, f"queued as job {job.pk}")
            return
        version, reused = services.synth_dataset(spec=parsed, owner=self.owner,
                                                 reporter=self.progress("synth"))
        stats = version.metadata.get("synth", {}).get("stats") or {}
        text = f"{version}" + (" (the same spec over the same inputs: reused)" if reused else
                               f": {stats.get('kept')} of {stats.get('generated')} rows kept, "
                               f"{stats.get('rows_per_minute')} rows/min")
        self.emit({"asset": version.asset.name, "version": version.number, "reused": reused,
                   "stats": stats}, text)
