"""Scanning a folder of 200 models: cold (every model inspected from its headers and
registered as an asset version referenced in place) and again with nothing changed
(fingerprints of names, sizes and mtimes only). The baseline in the same run is a bare
`os.walk` + `stat` of the same tree, the least any scan has to do.

    python benchmarks/scan_models.py [--models 200]

Targets: <= 2 s cold, <= 0.3 s rescan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_models(root: Path, n: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"org-{i % 10}" / f"model-{i:03d}"
        folder.mkdir(parents=True)
        layers = 2 + i % 3
        tensors = {"model.embed_tokens.weight": rng.standard_normal((64, 16), dtype=np.float32),
                   "model.norm.weight": np.ones(16, np.float32),
                   "lm_head.weight": rng.standard_normal((64, 16), dtype=np.float32)}
        for layer in range(layers):
            p = f"model.layers.{layer}."
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
                tensors[p + name + ".weight"] = rng.standard_normal((16, 16), dtype=np.float32)
            tensors[p + "input_layernorm.weight"] = np.ones(16, np.float32)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16,
            "num_hidden_layers": layers, "vocab_size": 64}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audobon-bench-") as tmp:
        os.environ["AUDOBON_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("AUDOBON_DATABASE_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "audobon_site.settings"
        import django

        django.setup()
        from django.core.management import call_command

        from apps.registry import services

        call_command("migrate", verbosity=0)
        root = Path(tmp) / "models"
        make_models(root, args.models)

        t0 = time.perf_counter()
        n_files = sum(len([os.stat(os.path.join(d, f)) for f in files]) for d, _, files in os.walk(root))
        t_walk = time.perf_counter() - t0

        t0 = time.perf_counter()
        cold = services.scan_models(paths=[root])
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = services.scan_models(paths=[root])
        t_again = time.perf_counter() - t0
        assert cold["found"] == cold["inspected"] == args.models and not cold["errors"], cold
        assert again["inspected"] == 0 and again["unchanged"] == args.models, again
        print(f"scan of {args.models} models: cold {t_cold:.2f} s "
              f"(target <= 2 s: {'met' if t_cold <= 2 else 'MISSED'}), "
              f"rescan {t_again:.3f} s (target <= 0.3 s: {'met' if t_again <= 0.3 else 'MISSED'}); "
              f"baseline os.walk+stat of {n_files} files {t_walk * 1000:.1f} ms "
              f"(rescan = {t_again / t_walk:.1f}x the walk)")


if __name__ == "__main__":
    main()
