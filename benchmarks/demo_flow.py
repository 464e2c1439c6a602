"""The training demo, timed: on a fresh AUDOBON_HOME, import SmolLM2-135M-Instruct, generate
a small synthetic instruction set with it, fine-tune it with LoRA on that set, and merge
the adapter back with an assembly recipe, each step as the command a user runs.

    python benchmarks/demo_flow.py [--rows 16] [--steps 30] [--dir /tmp]

Target: the whole chain under 15 minutes on a 2-core CPU.
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
AUDOBON = str(Path(sys.executable).with_name("audobon"))

SYNTH = {
    "method": "self_instruct", "generator": "smollm2-135m-instruct",
    "seed_tasks": [{"instruction": "Explain what a Python list is, in two sentences."},
                   {"instruction": "Give one tip for writing clear commit messages."},
                   {"instruction": "What is the difference between a file and a folder?"},
                   {"instruction": "Name three things the json module can do."},
                   {"instruction": "Describe what a unit test checks."}],
    "sampling": {"max_new_tokens": 96, "temperature": 0.7}, "dedup": {"method": "rouge_l"}, "seed": 0,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--dir", default=tempfile.gettempdir())
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="demo-flow-", dir=a.dir))
    env = {**os.environ, "AUDOBON_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    (work / "synth.yaml").write_text(json.dumps({**SYNTH, "name": "demo-instructions", "num_rows": a.rows}))
    (work / "finetune.yaml").write_text(json.dumps({
        "base_model": "smollm2-135m-instruct", "dataset": "demo-instructions", "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, "learning_rate": 2e-4, "batch_size": 4,
        "max_steps": a.steps, "eval_steps": a.steps, "save_steps": 10, "seed": 0, "packing": True,
        "name": "smollm2-demo-lora", "samples": ["Explain what a Python dict is."]}))
    (work / "merge.yaml").write_text(
        "merge_method: linear\nmodels:\n  - model: smollm2-135m-instruct+smollm2-demo-lora\n"
        "    parameters: {weight: 1.0}\ndtype: bfloat16\n")
    steps = [
        ("migrate", ["migrate", "-v", "0"]),
        ("import SmolLM2 (GGUF)", ["demo_models", "--smollm2"]),
        (f"synthesize {a.rows} rows", ["synth_dataset", str(work / "synth.yaml"), "--json"]),
        (f"LoRA fine-tune, {a.steps} steps", ["finetune", str(work / "finetune.yaml"), "--json"]),
        ("merge the adapter back", ["assemble", str(work / "merge.yaml"), "--name", "smollm2-demo-merged",
                                    "--json"]),
    ]
    total = 0.0
    print(f"in {work}")
    for label, args in steps:
        start = time.perf_counter()
        proc = subprocess.run([AUDOBON, *args], env=env, capture_output=True, text=True)
        took = time.perf_counter() - start
        total += took
        if proc.returncode:
            raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        print(f"  {label:32s} {took:7.1f} s   {tail[:160]}", flush=True)
    print(f"\nwhole demo: {total / 60:.1f} min (target under 15 min)")


if __name__ == "__main__":
    main()
