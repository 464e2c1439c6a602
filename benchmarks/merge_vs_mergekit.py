"""Merging against mergekit 0.1.5: the same recipe over the same inputs, in the same run.

Generates a Llama-shaped bf16 base of about --params parameters and two fine-tunes of it
(base + small noise), then for linear and ties runs, each in a fresh process:
- `audobon assemble RECIPE --name N --out DIR`, the whole command as a user runs it (start
  to exit: plan, merge, default validation, the result registered in the library of a home
  migrated beforehand, `--out` written);
- Audobon's engine alone (plan + execute, nothing registered), beside it;
- `mergekit-yaml` (from its own venv, --mergekit-python);
measuring wall time and peak RSS (the process tree's, sampled every 20 ms), and compares
the outputs tensor by tensor. The ratios to mergekit are the whole command's.

    python benchmarks/merge_vs_mergekit.py [--params 250M] [--methods linear ties] [--repeat 3]
        [--mergekit-python /work/mergekit-venv/bin/python] [--dir /work]
    python benchmarks/merge_vs_mergekit.py --params 1B --methods linear --only-ours

Targets: wall-time and peak-RSS ratios to mergekit <= 0.5 (linear, ties); the output's
largest absolute difference from mergekit's; a 1 B-parameter linear merge under 1.5 GB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SHAPES = {  # hidden, intermediate, layers, vocab, heads
    "250M": (1024, 2816, 16, 32000, 16),
    "1B": (2048, 5632, 22, 32000, 32),
}

RECIPES = {
    "linear": """merge_method: linear
models:
  - model: {a}
    parameters: {{weight: {wa}}}
  - model: {b}
    parameters: {{weight: {wb}}}
dtype: bfloat16
""",
    "ties": """merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{density: 0.5, weight: {wa}}}
  - model: {b}
    parameters: {{density: 0.5, weight: {wb}}}
parameters: {{normalize: true}}
dtype: bfloat16
""",
}

MAKE = """
import json, sys, torch
from safetensors.torch import save_file
hidden, inter, layers, vocab, heads = map(int, sys.argv[2:7])
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
def rnd(*shape): return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
names = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
         "lm_head.weight": (vocab, hidden)}
for i in range(layers):
    p = f"model.layers.{i}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"): names[p + f"self_attn.{n}.weight"] = (hidden, hidden)
    names[p + "mlp.gate_proj.weight"] = (inter, hidden); names[p + "mlp.up_proj.weight"] = (inter, hidden)
    names[p + "mlp.down_proj.weight"] = (hidden, inter)
    names[p + "input_layernorm.weight"] = (hidden,); names[p + "post_attention_layernorm.weight"] = (hidden,)
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
          "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
          "num_key_value_heads": heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
          "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 2048}
import os
for label, scale in (("base", 0.0), ("tune-a", 0.002), ("tune-b", 0.002)):
    os.makedirs(f"{out}/{label}", exist_ok=True)
    g.manual_seed(0)
    tensors = {n: rnd(*s) if len(s) > 1 else torch.ones(s, dtype=torch.bfloat16) for n, s in names.items()}
    if scale:
        g.manual_seed(hash(label) % 1000)
        tensors = {n: (t.float() + torch.randn(t.shape, generator=g) * scale).to(torch.bfloat16)
                   for n, t in tensors.items()}
    save_file(tensors, f"{out}/{label}/model.safetensors", metadata={"format": "pt"})
    json.dump(config, open(f"{out}/{label}/config.json", "w"))
    del tensors
"""

OURS = """
import sys
from pathlib import Path
from apps.assembly.engine.executor import execute
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
text = open(sys.argv[1]).read()
execute(make_plan(parse_recipe(text), lambda ref: Path(ref)), Path(sys.argv[2]), recipe_text=text)
"""


def run_command(home: Path, recipe: Path, name: str, out: Path, env: dict) -> tuple[float, int]:
    """The whole `audobon assemble` as a user runs it, in a home migrated beforehand."""
    cmd_env = {**env, "AUDOBON_HOME": str(home), "HF_HUB_OFFLINE": "1",
               "DJANGO_SETTINGS_MODULE": "audobon_site.settings"}
    return run_measured([sys.executable, "-m", "audobon_site.cli", "assemble", str(recipe), "--name", name,
                         "--out", str(out)], env=cmd_env)


def run_measured(argv: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes of the process and its children). Each run starts with
    nothing left for the disk to write (the run before it, or the models just made), so no
    side pays for another's writes."""
    os.sync()
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, peak


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors import safe_open

    def files(folder):
        index = folder / "model.safetensors.index.json"
        if index.exists():
            return {n: folder / f for n, f in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return {n: folder / "model.safetensors" for n in f.keys()}  # noqa: SIM118

    fa, fb = files(a), files(b)
    if set(fa) != set(fb):
        raise SystemExit(f"different tensor sets: {sorted(set(fa) ^ set(fb))[:5]}")
    worst = 0.0
    for name in fa:
        with safe_open(str(fa[name]), framework="pt") as x, safe_open(str(fb[name]), framework="pt") as y:
            worst = max(worst, float((x.get_tensor(name).float() - y.get_tensor(name).float()).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", choices=sorted(SHAPES), default="250M")
    parser.add_argument("--methods", nargs="+", choices=sorted(RECIPES), default=["linear", "ties"])
    parser.add_argument("--mergekit-python", default="/work/mergekit-venv/bin/python")
    parser.add_argument("--only-ours", action="store_true")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of each side; medians are reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audobon-merge-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-c", MAKE, str(tmp / "models"), *map(str, SHAPES[args.params])],
                       check=True)
        size = (tmp / "models" / "base" / "model.safetensors").stat().st_size
        print(f"models: 3 x {size / 1e9:.2f} GB bf16 ({size // 2 / 1e6:.0f} M parameters each)")
        # Audobon's modules byte-compiled, as scripts/setup leaves them (mergekit's were by pip).
        subprocess.run([sys.executable, "-m", "compileall", "-q", "apps", "audobon_site"], cwd=REPO,
                       check=True, capture_output=True)
        # The selection kernel compiled into numba's cache, as scripts/setup leaves it.
        subprocess.run([sys.executable, "-c", "from apps.assembly.engine.methods import sortselect; "
                        "assert sortselect.available()"], cwd=REPO, check=True)
        paths = [str(REPO), os.environ.get("PYTHONPATH")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        env = {k: v for k, v in env.items() if not k.startswith("AUDOBON_") and k != "DJANGO_SETTINGS_MODULE"}
        home = tmp / "home"
        subprocess.run([sys.executable, "-m", "audobon_site.cli", "migrate", "-v", "0"], check=True,
                       cwd=REPO, env={**env, "AUDOBON_HOME": str(home),
                                      "DJANGO_SETTINGS_MODULE": "audobon_site.settings"})
        for method in args.methods:
            m = tmp / "models"
            recipe = tmp / f"{method}.yaml"
            ours_runs, engine_runs, mk_runs = [], [], []
            for i in range(args.repeat):  # alternating, so a slow spell of the machine hits both
                # Each round its own weights, as when a user tunes them: a new result every time
                # (the same recipe again would be the library's cached result), the same for both.
                wa = round(0.4 + 0.01 * i, 2)
                recipe.write_text(RECIPES[method].format(base=m / "base", a=m / "tune-a", b=m / "tune-b",
                                                         wa=wa, wb=round(1 - wa, 2)))
                shutil.rmtree(tmp / f"ours-{method}", ignore_errors=True)
                ours_runs.append(run_command(home, recipe, f"bench-{method}-{i}", tmp / f"ours-{method}",
                                             env))
                shutil.rmtree(tmp / f"engine-{method}", ignore_errors=True)
                engine_runs.append(run_measured(
                    [sys.executable, "-c", OURS, str(recipe), str(tmp / f"engine-{method}")], env=env))
                if not args.only_ours:
                    shutil.rmtree(tmp / f"mk-{method}", ignore_errors=True)
                    mk = Path(args.mergekit_python).with_name("mergekit-yaml")
                    mk_runs.append(run_measured([str(mk), str(recipe), str(tmp / f"mk-{method}"),
                                                 "--no-copy-tokenizer", "--no-write-model-card", "--quiet",
                                                 "--random-seed", "0"]))
            ours_wall, ours_rss = _median(ours_runs)
            engine_wall, engine_rss = _median(engine_runs)
            times = f" (median of {args.repeat})" if args.repeat > 1 else ""
            line = (f"{method}: `audobon assemble` {ours_wall:.1f} s, peak RSS {ours_rss / 1e9:.2f} GB"
                    f"{times} (engine alone {engine_wall:.1f} s, {engine_rss / 1e9:.2f} GB)")
            if mk_runs:
                mk_wall, mk_rss = _median(mk_runs)
                diff = max_abs_diff(tmp / f"ours-{method}", tmp / f"mk-{method}")
                ratios = ", ".join(f"{o[0] / k[0]:.2f}" for o, k in zip(ours_runs, mk_runs, strict=True))
                line += (f"; mergekit {mk_wall:.1f} s, {mk_rss / 1e9:.2f} GB; ratios: time "
                         f"{ours_wall / mk_wall:.2f}, RSS {ours_rss / mk_rss:.2f} (targets <= 0.5); "
                         f"largest |difference| {diff:.3g}")
                if args.repeat > 1:
                    line += f"; time ratio of each round: {ratios}"
            if args.params == "1B" and method == "linear":
                line += f" (1B target: <= 1.5 GB: {'met' if ours_rss <= 1.5e9 else 'MISSED'})"
            print(line, flush=True)


def _median(runs: list[tuple[float, int]]) -> tuple[float, int]:
    """The median wall time and the median peak RSS (each on its own)."""
    return statistics.median(w for w, _ in runs), int(statistics.median(r for _, r in runs))

if __name__ == "__main__":
    main()
