import json
from pathlib import Path

from apps.assembly import services
from apps.assembly.engine.plan import PlanError
from apps.assembly.engine.recipe import RecipeError
from apps.assets.engine.errors import StoreError
from apps.monitoring.engine import preload
from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.services import job_submit


class Command(ForegroundCommand):
    help = "Build a model from a recipe (mergekit YAML works unchanged)."
    creates = True
    user_errors = (*ForegroundCommand.user_errors, RecipeError, PlanError, StoreError,
                   services.GateFailedError, services.OutWriteError,
                   preload.EngineProcessError)

    def add_arguments(self, parser):
        parser.add_argument("recipe", help="the recipe's YAML file")
        parser.add_argument("--dry-run", action="store_true", help="show the plan; run nothing")
        parser.add_argument("--name", help="the result's asset name (default: the recipe's file name)")
        parser.add_argument("--out", help="also write the model folder here")
        parser.add_argument("--queue", action="store_true", help="run as a job in the heavy worker")
        parser.add_argument("--no-validate", action="store_true",
                            help="skip validating the result against its parents (recorded on the version)")

    def handle(self, *args, recipe, dry_run, name, out, queue, no_validate=False, **opts):
        path = Path(recipe).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: no such recipe file")
        text = path.read_text()
        name = name or path.stem
        if dry_run:
            plan = services.recipe_plan(text)
            data = plan.to_json()
            est = data["estimate"]
            acc = data["accounting"]
            lines = [f"{plan.method}: {acc['output_tensors']} output tensors, "
                     f"{data['layers']['output']} layers, {acc['input_tensors']} input tensors "
                     f"({acc['uses']} uses, {acc['dropped']} dropped on purpose)",
                     f"needs about {est['peak_memory_bytes'] / 1e9:.2f} GB of memory, "
                     f"{est['disk_bytes'] / 1e9:.2f} GB of disk, {est['seconds']:.0f} s",
                     f"validation needs about {est['validation_peak_memory_bytes'] / 1e9:.2f} GB of memory "
                     f"(one model at a time), {est['validation_seconds']:.0f} s",
                     *[f"warning: {w}" for w in data["warnings"]]]
            self.stdout.write(json.dumps(data, default=str) if self.as_json else "\n".join(lines))
            return
        if queue:
            job = job_submit(kind="assemble", spec={"recipe": text, "name": name,
                                                    "validate_result": not no_validate}, owner=self.owner)
            self.emit({"job": job.pk}, f"queued as job {job.pk}")
            return
        engine = preload.current()  # started by the `audobon` command, importing torch meanwhile
        try:
            version, reused = services.assemble(text=text, name=name, reporter=self.progress("assemble"),
                                                owner=self.owner,
                                                out=Path(out).resolve() if out else None,
                                                validate_result=not no_validate, engine=engine)
        finally:
            if engine is not None:
                engine.close()
        self.emit({"asset": version.asset.name, "version": version.number, "reused": reused,
                   "validation": version.metadata.get("validation")},
                  f"{version}" + (" (the same recipe over the same inputs: reused)" if reused else ""))
