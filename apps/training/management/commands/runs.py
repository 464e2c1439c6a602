from apps.monitoring.foreground import ForegroundCommand
from apps.training import run_selectors
from apps.training.models import TrainingRun


class Command(ForegroundCommand):
    help = ("Fine-tuning runs: `runs list`, `runs show ID` (status, metrics, checkpoints, spec), "
            "`runs compare ID ID [...]` (final metrics and the spec keys that differ), "
            "`runs prune [--execute]` (the checkpoints of finished runs, and the space they hold).")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("list", "show", "compare", "prune"))
        parser.add_argument("ids", nargs="*", type=int, metavar="ID")
        parser.add_argument("--execute", action="store_true", help="prune: delete them (default: list)")

    def handle(self, *args, action, ids, execute=False, **opts):
        if action == "prune":
            from apps.training.services.finetune import checkpoints_prunable, checkpoints_prune

            found = checkpoints_prunable()
            total = sum(i["bytes"] for i in found)
            if execute:
                done = checkpoints_prune()
                self.emit(done, f"deleted the checkpoints of {len(done['runs'])} finished run(s): "
                                f"{done['bytes'] / 1e9:.2f} GB freed")
                return
            rows = [{"run": i["run"].pk, "name": i["run"].name, "bytes": i["bytes"]} for i in found]
            text = "\n".join(f"run {r['run']} {r['name']}: {r['bytes'] / 1e9:.2f} GB of checkpoints"
                             for r in rows) or "no finished run keeps checkpoints"
            self.emit({"runs": rows, "bytes": total},
                      text + (f"\n{total / 1e9:.2f} GB in all; `audobon runs prune --execute` frees it"
                              if rows else ""))
            return
        if action == "list":
            runs = list(run_selectors.runs_visible(user=None)[:200])
            latest = run_selectors.runs_jobs_latest(runs)
            rows = [run_selectors.run_as_dict(r, latest=latest.get(r.pk)) for r in runs]
            text = "\n".join(f"{r['id']:>5}  {r['status'] or '-':<11} {r['name']}  "
                             f"({r['base']} on {r['dataset']})"
                             f"  eval loss {r['metrics'].get('eval_loss_before', '-')} → "
                             f"{r['metrics'].get('eval_loss', '-')}" for r in rows) or "no runs yet"
            self.emit({"runs": rows}, text)
            return
        runs = [self._run(pk) for pk in ids]
        if action == "show":
            if len(runs) != 1:
                raise ValueError("give one run id: runs show ID")
            run = runs[0]
            out = {**run_selectors.run_as_dict(run), "spec": run.spec,
                   "checkpoints": run_selectors.run_checkpoints(run),
                   "resumable_job": getattr(run_selectors.run_resumable_job(run), "pk", None)}
            lines = [f"run {run.pk} {run.name}: {out['status'] or 'no job'} (jobs {out['jobs']})",
                     f"  {out['base']} on {out['dataset']} → {out['result'] or '-'}"]
            lines += [f"  {k}: {v}" for k, v in out["metrics"].items() if not isinstance(v, dict | list)]
            lines += [f"  checkpoint {c['name']} ({c['bytes']} bytes)" for c in out["checkpoints"]]
            if out["resumable_job"]:
                lines.append(f"  resume with: audobon finetune --resume {out['resumable_job']}")
            self.emit(out, "\n".join(lines))
            return
        if len(runs) < 2:
            raise ValueError("give two or more run ids: runs compare ID ID [...]")
        cmp = run_selectors.runs_compare(runs)
        finals = {r.pk: {k: v for k, v in r.metrics.items() if isinstance(v, int | float)} for r in runs}
        differs = {row["key"]: dict(zip([r.pk for r in runs], row["values"], strict=True))
                   for row in cmp["spec_rows"] if row["differs"]}
        out = {"runs": [r.pk for r in runs], "metrics": finals, "spec_differs": differs,
               "series": {c["name"]: {label: len(pts) for label, pts in c["series"].items()}
                          for c in cmp["charts"]}}
        lines = ["metric" + "".join(f"  #{r.pk:<12}" for r in runs)]
        for key in ("train_loss", "eval_loss_before", "eval_loss", "perplexity", "accuracy",
                    "tokens_per_second"):
            if any(key in f for f in finals.values()):
                lines.append(key + "".join(f"  {finals[r.pk].get(key, '-')!s:<13}" for r in runs))
        lines.append("spec keys that differ:" if differs else "the specs are the same")
        lines += [f"  {k}: " + " | ".join(str(v) for v in vals.values()) for k, vals in differs.items()]
        self.emit(out, "\n".join(lines))

    def _run(self, pk: int) -> TrainingRun:
        run = run_selectors.run_visible_get(user=None, run_id=pk)
        if run is None:
            raise LookupError(f"there is no run {pk}; see `audobon runs list`")
        return run
