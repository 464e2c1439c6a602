"""Run whole mergekit recipes through mergekit 0.1.5, many in one process.

Run with the python of an environment that has mergekit 0.1.5 (not the project's venv):

    $AUDOBON_MERGEKIT_PYTHON tests/assembly/mergekit_recipes.py JOBS.json

JOBS.json: a list of {"id": ..., "yaml": recipe text with absolute model paths, "out": folder}.
Each recipe is merged as `mergekit-yaml` merges it (`run_merge`, tokenizer not copied, no
model card). Prints one JSON object: {id: null when merged, else the error text}.
"""

from __future__ import annotations

import json
import sys

import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions


def main(jobs_path: str) -> None:
    with open(jobs_path) as f:
        jobs = json.load(f)
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0)
    results: dict[str, str | None] = {}
    for job in jobs:
        try:
            config = MergeConfiguration.model_validate(yaml.safe_load(job["yaml"]))
            run_merge(config, job["out"], options=options)
            results[job["id"]] = None
        except Exception as exc:  # reported per recipe: the test says which one failed
            results[job["id"]] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
