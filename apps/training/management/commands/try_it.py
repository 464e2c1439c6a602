from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.models import Job
from apps.monitoring.services import JobSpecError, JobStateError
from apps.training import run_selectors
from apps.training.services.try_it import TRY_IT_DEFAULT_TOKENS, try_it_submit


class Command(ForegroundCommand):
    help = ("Answer one prompt with a fine-tuning run's base model and its tuned model, side by "
            "side (greedy, with the chat template); the run page's \"Try it\".")
    creates = True
    user_errors = (*ForegroundCommand.user_errors, JobSpecError, JobStateError)

    def add_arguments(self, parser):
        parser.add_argument("run", type=int, metavar="RUN_ID")
        parser.add_argument("prompt")
        parser.add_argument("--max-new-tokens", type=int, default=TRY_IT_DEFAULT_TOKENS)
        parser.add_argument("--queue", action="store_true", help="run as a job in the heavy worker")

    def handle(self, *args, run, prompt, max_new_tokens, queue, **opts):
        found = run_selectors.run_visible_get(user=self.owner, run_id=run)
        if found is None:
            raise LookupError(f"there is no run {run}; see `audobon runs list`")
        job = try_it_submit(run=found, prompt=prompt, max_new_tokens=max_new_tokens, enqueue=queue,
                            owner=self.owner)
        if queue:
            self.emit({"job": job.pk, "run": found.pk, "status": job.status}, f"queued as job {job.pk}")
            return
        from apps.monitoring.tasks import execute_job

        # Run here, and recorded like any job: the run page lists this answer too.
        execute_job(job.pk, tee=self.progress("try_it"))
        job.refresh_from_db()
        if job.status != Job.Status.SUCCEEDED:
            from django.core.management.base import CommandError

            raise CommandError(f"job {job.pk} {job.status}: {job.error or 'stopped'}")
        result = {**job.result, "job": job.pk}
        self.emit(result, f"prompt: {prompt}\n\n--- base ---\n{result['base']}\n\n"
                          f"--- tuned ({result['tuned_ref']}) ---\n{result['tuned']}")
