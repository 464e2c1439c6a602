"""Synthetic data with the real SmolLM2-135M-Instruct: `audobon synth_dataset SPEC.yaml --json`
run as a whole process (model load, generation, filters, ROUGE-L de-duplication,
registration), timed from outside. Prints rows generated per minute (wall clock of the
whole command, and the engine's own figure for the generation alone) and the share of
rows removed as near-duplicates.

    python benchmarks/synth_rows_per_minute.py [--rows 40] [--max-new-tokens 64] [--batch-size 8]
                                               [--threads N] [--home DIR]

A fresh AUDOBON_HOME in a temporary folder unless --home names one that already has the
SmolLM2 asset; `audobon demo_models --smollm2` imports it first (about a minute, once).
--threads sets torch's CPU threads in the child (OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.proc import audobon_env  # noqa: E402

SEED_TASKS = [
    "Write a haiku about autumn leaves.",
    "Explain what a Python list comprehension is, with an example.",
    "Give three tips for a first job interview.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Convert 100 degrees Fahrenheit to Celsius and show the steps.",
    "Suggest a name for a bakery that sells only bread.",
    "List four planets of the solar system in order from the sun.",
    "Write a polite email declining a meeting invitation.",
]


def audobon(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "audobon_site.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"audobon {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch CPU threads in the child")
    parser.add_argument("--home", type=Path, help="an AUDOBON_HOME to use (and keep)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audobon-bench-") as tmp:
        home = args.home or Path(tmp) / "home"
        extra = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
        env = audobon_env(home, **extra)
        audobon(env, "migrate", "-v0")
        t0 = time.monotonic()
        audobon(env, "demo_models", "--smollm2", "--json")
        print(f"SmolLM2 asset ready in {time.monotonic() - t0:.1f} s (import, or found)")
        spec = Path(tmp) / "bench-synth.yaml"
        # A fresh seed per run: the same spec again would be a cache hit, not a measurement.
        spec.write_text(json.dumps({
            "name": "bench-synth", "num_rows": args.rows, "batch_size": args.batch_size,
            "seed": time.time_ns() % 2**31,
            "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": 0.7, "top_p": 0.9},
            "seed_tasks": [{"instruction": t} for t in SEED_TASKS],
            "dedup": {"method": "rouge_l"},
        }))
        t0 = time.monotonic()
        result = json.loads(audobon(env, "synth_dataset", str(spec), "--json").strip().splitlines()[-1])
        wall = time.monotonic() - t0
        stats = result["stats"]
        removed = stats["removed_by_filter"]
        print(f"{stats['generated']} rows with SmolLM2-135M-Instruct (max_new_tokens {args.max_new_tokens}, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs{', cuda' if _cuda() else ''}): "
              f"{stats['generated'] / wall * 60:.1f} rows/min for the whole command ({wall:.1f} s), "
              f"{stats['rows_per_minute']} rows/min generation alone")
        print(f"de-duplication (ROUGE-L >= {stats['dedup']['threshold']}) removed "
              f"{stats['removed_by_dedup']} rows ({stats['removed_by_dedup'] / stats['generated']:.0%}); "
              f"filters removed {sum(removed.values())} {removed}; kept {stats['kept']} "
              f"as {result['asset']}@{result['version']}")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
