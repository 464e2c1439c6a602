from pathlib import Path

from apps.monitoring.engine.terminal import TerminalProgress
from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.models import Job
from apps.monitoring.services import JobSpecError, JobStateError
from apps.training.engine.spec import FinetuneSpecError, spec_from_yaml
from apps.training.services import finetune as services


class Command(ForegroundCommand):
    help = ("Fine-tune a model (LoRA, QLoRA or full) on a library dataset from a YAML spec; "
            "the result is registered with its evaluation and lineage.")
    creates = True
    user_errors = (*ForegroundCommand.user_errors, FinetuneSpecError, JobSpecError, JobStateError)

    def add_arguments(self, parser):
        parser.add_argument("spec", nargs="?", help="the spec's YAML file (not needed with --resume)")
        parser.add_argument("--resume", type=int, metavar="JOB_ID",
                            help="continue a stopped, failed or interrupted run from its last checkpoint")
        parser.add_argument("--queue", action="store_true", help="run as a job in the heavy worker")

    def handle(self, *args, spec, resume, queue, **opts):
        if resume is not None:
            old = Job.objects.filter(pk=resume).first()
            if old is None:
                raise ValueError(f"there is no job {resume}")
            run, job = services.finetune_resume(job=old, enqueue=queue, owner=self.owner)
        else:
            if not spec:
                raise ValueError("give the spec's YAML file, or --resume JOB_ID")
            path = Path(spec).expanduser()
            if not path.is_file():
                raise ValueError(f"{path}: no such spec file")
            parsed = spec_from_yaml(path.read_text(errors="replace"), source=str(path))
            run, job = services.finetune_submit(spec=parsed, enqueue=queue, owner=self.owner)
        if queue:
            self.emit({"job": job.pk, "run": run.pk, "status": job.status},
                      f"queued as job {job.pk} (run {run.pk})")
            return
        from apps.monitoring.tasks import execute_job

        # The job runs here, in this process, and is on the pages like any other: its events
        # are stored, and a kill leaves checkpoints that --resume continues from.
        progress = TerminalProgress(label="finetune", stream=self.stderr._out)
        execute_job(job.pk, tee=progress)
        job.refresh_from_db()
        run.refresh_from_db()
        result = job.result or {}
        out = {"job": job.pk, "run": run.pk, "status": job.status, "error": job.error or None,
               "adapter": result.get("adapter"), "model": result.get("model"),
               "merged": result.get("merged"), "metrics": result.get("metrics") or {},
               "evaluation": result.get("evaluation"), "checkpoints": result.get("checkpoints") or
               [p.name for p in _checkpoints(run)]}
        if job.status == Job.Status.SUCCEEDED:
            m = out["metrics"]
            text = (f"{out['adapter'] or out['model']}: train loss {m.get('train_loss')}, eval loss "
                    f"{m.get('eval_loss_before')} → {m.get('eval_loss')}, "
                    f"{m.get('tokens_per_second')} tokens/s (job {job.pk})")
            self.emit(out, text)
            return
        if self.as_json:
            self.emit(out, "")
        hint = f"; resume with: audobon finetune --resume {job.pk}" if out["checkpoints"] else ""
        from django.core.management.base import CommandError

        raise CommandError(f"job {job.pk} {job.status}: {job.error or 'stopped'}{hint}")


def _checkpoints(run):
    from apps.training.engine.finetune import checkpoints

    return checkpoints(services.run_dir(run))
