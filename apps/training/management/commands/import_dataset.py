import json
from pathlib import Path

from django.core.management.base import CommandError

from apps.assets.engine.errors import StoreError
from apps.monitoring.foreground import ForegroundCommand
from apps.monitoring.services import job_submit
from apps.training import selectors
from apps.training.engine.dataset_prep import FORMATS, DatasetError
from apps.training.services import dataset as services


def parse_maps(items: list[str]) -> dict[str, str]:
    """`--map COL=FIELD ...` -> {COL: FIELD}."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column or not target:
            raise ValueError(f"--map {item!r}: write it as COLUMN=FIELD, e.g. --map question=instruction")
        if column in mapping:
            raise ValueError(f"--map {item!r}: column {column!r} is mapped twice")
        mapping[column] = target
    return mapping


class Command(ForegroundCommand):
    help = ("Import a dataset file (JSONL, JSON list, CSV, Parquet or .txt) as a library dataset: "
            "every row checked, normalized, split into train and validation.")
    creates = True
    user_errors = (*ForegroundCommand.user_errors, StoreError)

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", help="asset name (default: the file's name without suffix)")
        parser.add_argument("--format", choices=FORMATS, dest="fmt", help="default: detected")
        parser.add_argument("--map", action="append", default=[], dest="maps", metavar="COL=FIELD",
                            help="read a field from another column, e.g. --map question=instruction")
        parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
        parser.add_argument("--validation-fraction", type=float, default=0.1, dest="fraction")
        parser.add_argument("--labels", help="the allowed labels, comma-separated (classification)")
        parser.add_argument("--model", help="refuse rows longer than this model takes (path or name)")
        parser.add_argument("--max-length", type=int, dest="max_length",
                            help="token limit with --model (default: the model's)")
        parser.add_argument("--queue", action="store_true", help="run as a job in the light worker")

    def handle(self, *args, path, name, fmt, maps, seed, fraction, labels, model, max_length, queue,
               **opts):
        source = Path(path).expanduser().resolve()
        mapping = parse_maps(maps)
        label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels is not None else None
        if queue:
            job = job_submit(kind="import_dataset", spec={
                "path": str(source), "name": name, "format": fmt, "mapping": mapping, "seed": seed,
                "validation_fraction": fraction, "labels": label_list, "model": model,
                "max_length": max_length}, owner=self.owner)
            self.emit({"job": job.pk, "status": job.status}, f"queued as job {job.pk}")
            return
        asset_name = name or services.dataset_default_name(source.name)
        before = selectors.dataset_head(name=asset_name)
        try:
            version = services.dataset_import(
                source=source, name=asset_name, fmt=fmt, mapping=mapping, seed=seed,
                validation_fraction=fraction, labels=label_list, model=model, max_length=max_length,
                owner=self.owner, reporter=self.progress(f"import {source.name}"))
        except DatasetError as exc:
            if self.as_json:
                self.stdout.write(json.dumps({"ok": False, "source": str(source), "problems": exc.problems}))
            else:
                for problem in exc.problems:
                    self.stderr.write(f"{source.name}: {problem}")
            real = [p for p in exc.problems if not p.startswith("... and ")]
            raise CommandError(f"{len(real)} problem{'s' if len(real) != 1 else ''} in {source.name}; "
                               "nothing imported") from None
        card = selectors.dataset_card(version)
        reused = before is not None and before.pk == version.pk
        rows = card.get("rows", {})
        self.emit({"ok": True, "asset": version.asset.name, "version": version.number,
                   "version_id": str(version.pk), "reused": reused, "format": card.get("format"),
                   "task": card.get("task"), "rows": rows, "labels": card.get("labels")},
                  f"{version}: {rows.get('train')} train + {rows.get('validation')} validation rows "
                  f"({card.get('format')} -> {card.get('task')})"
                  + (" (the same rows as before: no new version)" if reused else ""))
