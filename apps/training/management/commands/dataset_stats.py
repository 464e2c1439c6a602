from apps.assets.engine.errors import StoreError
from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.services import job_submit
from apps.training.services import dataset as services


class Command(ForegroundCommand):
    help = ("Token statistics of a dataset under a model's tokenizer and chat template (count, "
            "min/mean/p50/p95/max per split, a length histogram), kept as a report asset.")
    creates = True
    user_errors = (*ForegroundCommand.user_errors, StoreError)

    def add_arguments(self, parser):
        parser.add_argument("dataset", help="NAME or NAME@VERSION")
        parser.add_argument("--model", required=True, help="a model folder or library name")
        parser.add_argument("--max-length", type=int, dest="max_length",
                            help="token limit (default: the model's max_position_embeddings)")
        parser.add_argument("--queue", action="store_true", help="run as a job in the light worker")

    def handle(self, *args, dataset, model, max_length, queue, **opts):
        if queue:
            job = job_submit(kind="dataset_stats", spec={"dataset": dataset, "model": model,
                                                         "max_length": max_length}, owner=self.owner)
            self.emit({"job": job.pk, "status": job.status}, f"queued as job {job.pk}")
            return
        report = services.dataset_stats(dataset=dataset, model=model, max_length=max_length,
                                        owner=self.owner,
                                        reporter=self.progress("tokens"))
        stats = report.metadata["token_stats"]
        lines = [f"{stats['dataset']} under {stats['model']} (max length {stats['max_length']}):"]
        for split, s in stats["splits"].items():
            if s.get("count"):
                lines.append(f"  {split:<10} {s['count']:>7} rows  min {s['min']}  mean {s['mean']}  "
                             f"p50 {s['p50']}  p95 {s['p95']}  max {s['max']}  over {s['over_max_length']}")
            else:
                lines.append(f"  {split:<10} no rows")
        lines += [f"  problem: {p}" for p in stats["problems"][:20]]
        lines.append(f"report: {report} (histogram: lengths.png)")
        self.emit({"report": report.asset.name, "version": report.number, **stats}, "\n".join(lines))
