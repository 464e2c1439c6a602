"""`audobon evaluate MODEL [--dataset NAME] [--texts N] [--queue [--wait]] [--json]`."""

import time

from django.core.management.base import CommandError

from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.models import Job
from apps.monitoring.services import JobSpecError, job_submit


class Command(ForegroundCommand):
    help = ("Loss and perplexity of a causal language model (a library model or a folder) on a "
            "library dataset's texts (validation rows first) or on the built-in validation texts. "
            "Registers nothing. With --queue it runs in the heavy worker, whose model cache keeps "
            "the model loaded: evaluating it again there does not load it again.")
    user_errors = (*ForegroundCommand.user_errors, JobSpecError)
    creates = True

    def add_arguments(self, parser):
        parser.add_argument("model", help="NAME[@N] of a library model, or a model folder")
        parser.add_argument("--dataset", help="NAME[@N] of a library dataset (default: built-in texts)")
        parser.add_argument("--texts", type=int, default=32, help="how many texts (default 32)")
        parser.add_argument("--max-tokens", type=int, default=256, dest="max_tokens",
                            help="each text is cut at this many tokens (default 256)")
        parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
        parser.add_argument("--queue", action="store_true", help="run as a job in the heavy worker")
        parser.add_argument("--wait", action="store_true",
                            help="with --queue: wait for the job and print its result")
        parser.add_argument("--timeout", type=float, default=3600,
                            help="with --wait: give up after this many seconds (default 3600)")

    def handle(self, *args, model, dataset, texts, max_tokens, device, queue, wait, timeout, **opts):
        spec = {"model": model, "dataset": dataset, "texts": texts, "max_tokens": max_tokens,
                "device": device}
        job = job_submit(kind="evaluate", spec=spec, owner=self.owner, enqueue=queue)
        if queue and not wait:
            self.emit({"job": job.pk, "status": job.status}, f"queued as job {job.pk}")
            return
        if queue:
            deadline = time.monotonic() + timeout
            while not job.is_finished:
                if time.monotonic() > deadline:
                    raise CommandError(f"job {job.pk} is still {job.status} after {timeout:.0f} s; "
                                       f"see `audobon jobs show {job.pk}`")
                time.sleep(0.1)
                job.refresh_from_db()
        else:
            from apps.monitoring.tasks import execute_job

            # Run here, and recorded like any job (the job page shows the numbers).
            execute_job(job.pk, tee=self.progress("evaluate"))
            job.refresh_from_db()
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"job {job.pk} {job.status}: {job.error or 'stopped'}")
        r = job.result
        run_s = ((job.finished_at - job.started_at).total_seconds()
                 if job.started_at and job.finished_at else None)
        out = {**r, "job": job.pk, "job_seconds": run_s}
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        ppl = "-" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        how = "from the cache" if r["cached"] else "loaded"
        self.emit(out, f"{r['model']} on {r['texts']} texts of {r['source']}: loss {loss}, perplexity {ppl}\n"
                       f"({r['dtype']} on {r['device']}; model {how} in {r['load_seconds']:.2f} s, "
                       f"evaluated in {r['eval_seconds']:.2f} s; job {job.pk})")
