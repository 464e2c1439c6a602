"""kill -9 of the heavy worker in the middle of a fine-tuning run, then resume.

A fresh AUDOBON_HOME, the demo Llama (or SmolLM2) and a chat dataset. First the run
uninterrupted, in the foreground (`audobon finetune SPEC --json`). Then the same spec as a
job in a separate heavy worker (`audobon run_worker --queue heavy`), killed with SIGKILL
once the job is past --kill-at steps, and `audobon finetune --resume JOB --json`.

Prints the steps lost (the kill step minus the last checkpoint), the wall time of both, and
how the resumed result compares with the uninterrupted one: final eval loss, and whether
the adapter's tensors are bit-identical.

    python benchmarks/finetune_kill_resume.py [--model demo|smollm2] [--steps 120] [--save-steps 20]
        [--kill-at 50]

Targets: at most one checkpoint interval lost; the final loss within 0.1 % of the
uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AUDOBON = str(Path(sys.executable).with_name("audobon"))
sys.path.insert(0, str(REPO))

from benchmarks.finetune_vs_trainer import chat_rows  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("demo", "smollm2"), default="demo")
    # Enough steps that the kill lands mid-run: the job is watched through `jobs show`.
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--save-steps", type=int, default=20)
    p.add_argument("--kill-at", type=int, default=50)
    p.add_argument("--dir", default=tempfile.gettempdir())
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kill-resume-", dir=a.dir))
    env = {**os.environ, "AUDOBON_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(*args: str) -> str:
        return subprocess.run([AUDOBON, *args], env=env, check=True, capture_output=True, text=True).stdout

    print(f"setting up in {work} ...", flush=True)
    run("migrate", "-v", "0")
    run(*(["demo_models", "--smollm2"] if a.model == "smollm2" else ["demo_models"]))
    model = "smollm2-135m-instruct" if a.model == "smollm2" else "demo-llama-base"
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(240, longest=120 if a.model == "smollm2"
                                                                      else 36)))
    run("import_dataset", str(data), "--name", "chat", "--json")
    spec = work / "spec.yaml"
    spec.write_text(json.dumps({
        "base_model": model, "dataset": "chat", "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
        "learning_rate": 1e-3, "batch_size": 4, "max_steps": a.steps, "eval_steps": a.steps,
        "save_steps": a.save_steps, "save_total_limit": 2, "seed": 11, "samples": []}))

    started = time.perf_counter()
    whole = json.loads(run("finetune", str(spec), "--json"))
    whole_wall = time.perf_counter() - started
    print(f"uninterrupted: {whole_wall:.1f} s, eval loss {whole['metrics']['eval_loss']}", flush=True)

    worker = subprocess.Popen([AUDOBON, "run_worker", "--queue", "heavy"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = json.loads(run("finetune", str(spec), "--queue", "--json"))["job"]
    started = time.perf_counter()
    steps = 0
    while steps < a.kill_at:
        time.sleep(0.2)
        shown = json.loads(run("jobs", "show", str(job), "--json"))
        if shown["status"] in ("failed", "succeeded", "cancelled"):
            raise SystemExit(f"job {job} ended ({shown['status']}) before the kill: {shown['error']}")
        steps = shown["steps_done"] or 0
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    killed_wall = time.perf_counter() - started
    # The step the worker had reached when it died: its last progress row (written at most
    # 0.1 s apart), read once it can no longer change.
    steps = json.loads(run("jobs", "show", str(job), "--json"))["steps_done"]
    runs = work / "home" / "runs"
    ckpts = sorted(int(c.name.split("-")[1]) for r in runs.iterdir() for c in (r / "checkpoints").glob(
        "checkpoint-*") if r.name != str(whole["run"]))
    last = max(ckpts) if ckpts else 0
    print(f"killed the worker (-9) at step {steps}; last checkpoint at step {last}: "
          f"{steps - last} steps lost (checkpoint interval {a.save_steps})", flush=True)

    started = time.perf_counter()
    resumed = json.loads(run("finetune", "--resume", str(job), "--json"))
    resumed_wall = time.perf_counter() - started

    from safetensors.numpy import load_file

    def adapter_tensors(ref: str) -> dict:
        out = work / f"export-{ref.replace('@', '-').replace(' ', '_')}"
        run("export_asset", ref, str(out))
        return load_file(str(out / "adapter_model.safetensors"))

    a_t, b_t = adapter_tensors(whole["adapter"]), adapter_tensors(resumed["adapter"])
    identical = a_t.keys() == b_t.keys() and all((a_t[k] == b_t[k]).all() for k in a_t)
    la, lb = whole["metrics"]["eval_loss"], resumed["metrics"]["eval_loss"]
    print(f"\nmodel {model}, {a.steps} steps, checkpoints every {a.save_steps}")
    print(f"  uninterrupted run:      {whole_wall:6.1f} s  eval loss {la}")
    print(f"  killed after            {killed_wall:6.1f} s  at step {steps}, resumed from step {last}")
    print(f"  resume to the end:      {resumed_wall:6.1f} s  eval loss {lb}")
    print(f"  steps lost: {steps - last} (<= {a.save_steps}: {steps - last <= a.save_steps})")
    print(f"  final eval loss difference: {abs(la - lb) / la * 100:.4f} %  "
          f"adapter bit-identical: {identical}")


if __name__ == "__main__":
    main()
