"""Fine-tuning throughput: `audobon finetune` against a plain transformers Trainer + peft
script (benchmarks/finetune_baseline.py), the same model, data and hyperparameters, each as
a whole process (start to exit; for Audobon the result is registered in the library, with
its evaluation before and after), in the same run.

Tokens/s is the non-padding tokens trained divided by the whole process's wall time. The
data are chat rows of very different lengths (standard-library docstrings, a few words to a
few sentences), so padded batches carry a lot of padding, which packing removes.

    python benchmarks/finetune_vs_trainer.py [--model smollm2|demo] [--rows 140] [--steps 21]
        [--batch-size 6] [--repeat 1] [--dir /tmp]

The defaults train one epoch exactly (the import keeps a tenth of the rows for validation),
so every side trains on the same rows, in its own batches.

Targets: Audobon without packing >= 1.0x the baseline's tokens/s, with packing >= 1.5x; the
loss after N steps within 2 % of the baseline's. That loss is the validation loss of the
model after N steps: without packing Audobon batches rows of similar length together
(`group_by_length`, its default), so its steps see the same kind of rows in other
groupings and the running train loss (a mean over differently composed batches) is shown
beside it but is not comparable row for row; with packing the batches are the baseline's.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
AUDOBON = str(Path(sys.executable).with_name("audobon"))


def chat_rows(n: int, seed: int = 0, longest: int = 120) -> list[dict]:
    """Questions about standard-library names, answered by the start of their docstrings,
    from 3 to 120 words: real text of very different lengths."""
    rng = random.Random(seed)
    docs = []
    for name in ("json", "textwrap", "pathlib", "functools", "collections", "string", "csv", "argparse",
                 "os", "re", "shutil", "itertools"):
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = " ".join((inspect.getdoc(getattr(module, attr)) or "").split())
            if len(doc) > 60:
                docs.append((f"{name}.{attr}", doc))
    rows = []
    for i in range(n):
        name, doc = docs[i % len(docs)]
        words = doc.split()[: rng.choice((3, 6, 12, longest // 4, longest // 2, longest))]
        rows.append({"messages": [{"role": "user", "content": f"What does {name} do?"},
                                  {"role": "assistant", "content": " ".join(words)}]})
    return rows


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) of the process tree, stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, peak / 1e9, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("smollm2", "demo"), default="smollm2")
    # 140 rows: 126 train (one epoch is 21 steps of 6, the default), 14 validation.
    p.add_argument("--steps", type=int, default=21)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--rows", type=int, default=140)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--dir", default=tempfile.gettempdir())
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="finetune-bench-", dir=a.dir))
    env = {**os.environ, "AUDOBON_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = lambda *args: subprocess.run([AUDOBON, *args], env=env, check=True, capture_output=True,  # noqa: E731
                                       text=True).stdout
    print(f"setting up in {work} ...", flush=True)
    run("migrate", "-v", "0")
    if a.model == "smollm2":
        run("demo_models", "--smollm2")
        model = "smollm2-135m-instruct"
    else:
        run("demo_models")
        model = "demo-llama-base"
    data = work / "chat.jsonl"
    rows = chat_rows(a.rows, longest=120 if a.model == "smollm2" else 36)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("import_dataset", str(data), "--name", "bench-chat", "--json")
    run("export_asset", model, str(work / "model"))
    run("export_asset", "bench-chat", str(work / "data"))

    common = {"base_model": model, "dataset": "bench-chat", "method": "lora",
              "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, "learning_rate": 2e-4,
              "batch_size": a.batch_size, "max_steps": a.steps, "eval_steps": a.steps,
              "save_steps": a.steps, "seed": 0, "samples": [], "eval_max_rows": 32}
    specs = {}
    for packing in (False, True):
        path = work / f"spec-{'packed' if packing else 'padded'}.yaml"
        path.write_text(json.dumps({**common, "packing": packing}))
        specs[packing] = path
    baseline_cmd = [sys.executable, str(REPO / "benchmarks" / "finetune_baseline.py"),
                    "--model", str(work / "model"), "--data", str(work / "data"), "--steps", str(a.steps),
                    "--batch-size", str(a.batch_size), "--eval-rows", "32"]

    rows: dict[str, list[dict]] = {"baseline": [], "audobon": [], "audobon packed": []}
    for i in range(a.repeat):
        order = ["baseline", "audobon", "audobon packed"]
        if i % 2:
            order.reverse()
        for side in order:
            if side == "baseline":
                wall, peak, out = timed([*baseline_cmd, "--out", str(work / f"base-{i}")], env)
                res = json.loads(out.strip().splitlines()[-1])
                tokens, loss, eval_loss = res["tokens"], res["train_loss"], res["eval_loss"]
            else:
                wall, peak, out = timed([AUDOBON, "finetune", str(specs[side.endswith("packed")]), "--json"],
                                        env)
                res = json.loads(out)
                m = res["metrics"]
                tokens, loss, eval_loss = m["tokens"], m["train_loss"], m["eval_loss"]
            rows[side].append({"wall": wall, "peak_gb": peak, "tokens": tokens, "tok_s": tokens / wall,
                               "train_loss": loss, "eval_loss": eval_loss})
            print(f"  round {i + 1} {side:15s} {wall:6.1f} s  {tokens / wall:8.1f} tokens/s  "
                  f"peak {peak:.2f} GB  train loss {loss:.4f}", flush=True)

    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in rows.items()}
    base = med["baseline"]
    print(f"\nmodel {model}, {a.steps} steps of batch {a.batch_size}, {a.repeat} round(s), medians:")
    for side in ("baseline", "audobon", "audobon packed"):
        m = med[side]
        ratio = m["tok_s"] / base["tok_s"]
        loss_change = (m["train_loss"] / base["train_loss"] - 1) * 100
        eval_change = (m["eval_loss"] / base["eval_loss"] - 1) * 100
        print(f"  {side:15s} {m['wall']:6.1f} s  {m['tok_s']:8.1f} tokens/s  ratio {ratio:.2f}"
              f"  eval loss after {a.steps} steps {m['eval_loss']:.4f} ({eval_change:+.2f} %)"
              f"  train loss {m['train_loss']:.4f} ({loss_change:+.2f} %)  peak RSS {m['peak_gb']:.2f} GB")


if __name__ == "__main__":
    main()
