"""Hostile recipes up to 64 KB, planned as a user meets them: typed into the assembly editor,
which posts the text to the plan endpoint (`POST /assembly/plan/`, the htmx partial) on each
keystroke. Django in-process with its test client, logged in, against a fresh home with the
demo models registered, so recipes that name real models are planned for real.

    python benchmarks/hostile_recipe.py [--repeat 3]

Target: the worst request answers in <= 1 s. Beside each request, `parse_recipe` alone on
the same text (the YAML budgets and pydantic), to show what parsing costs of the whole. Before
the budgets, the 429-byte alias bomb alone held the process for about 40 s at about 1 GB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KB64 = 64 * 1024
HEAD = "merge_method: linear\nmodels: [{model: demo-llama-tune-even}, {model: demo-llama-tune-late}]\n"
MODELS = ("demo-llama-tune-even", "demo-llama-tune-late")


def fill(prefix: str, unit: str, suffix: str = "") -> str:
    """`prefix`, then `unit` as many times as fit in 64 KB with `suffix` after."""
    return prefix + unit * ((KB64 - len(prefix) - len(suffix) - 1) // len(unit)) + suffix


def chain(wrap: str) -> str:
    """Anchors each built on the one before, as many as fit: `[{0}, {0}]` doubles the values
    at each step, `[{0}]` nests one level deeper."""
    lines = [HEAD + "parameters:", "  a0: &a0 [1, 1]"]
    while sum(len(line) + 1 for line in lines) < KB64 - 100:
        lines.append(f"  a{len(lines) - 1}: &a{len(lines) - 1} " + wrap.format(f"*a{len(lines) - 2}"))
    return "\n".join(lines) + f"\n  weight: *a{len(lines) - 2}\n"


def cases() -> dict[str, str]:
    names = "abcdefghi"
    bomb = [HEAD + "parameters:", "  a: &a [1,1,1,1,1,1,1,1,1]"]
    bomb += [f"  {name}: &{name} [{','.join([f'*{below}'] * 9)}]" for below, name in pairwise(names)]
    depth = (KB64 - len(HEAD) - 40) // 2
    big = "  big: &big [" + ", ".join(["1"] * 4000) + "]\n"
    return {
        "alias bomb, 9 x 9 deep": "\n".join(bomb) + "\n  weight: *i\n",
        "paired-alias chain": chain("[{0}, {0}]"),
        "nested-alias chain": chain("[{0}]"),
        "aliases of a 4000-value list": fill(HEAD + "parameters:\n" + big + "  weight: [", "*big, ",
                                             "*big]\n"),
        "deep flow lists": HEAD + "parameters: {weight: " + "[" * depth + "1" + "]" * depth + "}\n",
        "deep block lists": fill(HEAD + "parameters:\n  weight:\n    ", "- "),
        "flow list of 30000 numbers": fill(HEAD + "parameters: {weight: [", "1,", "1]}\n"),
        "a 64 KB base-60 integer": fill(HEAD + "parameters: {weight: 1", ":1", "}\n"),
        "a 64 KB decimal integer": fill(HEAD + "parameters: {weight: 1", "1", "}\n"),
        # Within the budgets: recipes the planner really works through.
        "1000 models": fill("merge_method: linear\nmodels:\n",
                            "- {model: demo-llama-tune-even, parameters: {weight: 1}}\n"),
        "1000 slices": fill("merge_method: linear\nslices:\n",
                            "- sources: [{model: demo-llama-tune-even, layer_range: [0, 2]}]\n"),
        "3000-point gradient": HEAD + "parameters:\n  weight: [" + ", ".join(["0.5"] * 3000) + "]\n",
        "1900 conditionals": fill(HEAD + "parameters:\n  weight:\n", "  - {filter: mlp, value: 0.5}\n",
                                  "  - {value: 1}\n"),
        "a slice of 10^9 layers": "merge_method: linear\nslices:\n- sources: [{model: demo-llama-tune-even, "
                                  "layer_range: [0, 1000000000]}]\n",
        "a slice of 10^4 layers": "merge_method: linear\nslices:\n- sources: [{model: demo-llama-tune-even, "
                                  "layer_range: [0, 10000]}]\n",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="requests per recipe (the worst counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audobon-bench-") as tmp:
        os.environ["AUDOBON_HOME"] = tmp
        os.environ.pop("AUDOBON_DATABASE_URL", None)
        os.environ.pop("AUDOBON_REDIS_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "audobon_site.settings"
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.test import Client

        from apps.assembly.engine.recipe import RecipeError, parse_recipe
        from apps.registry import services as registry_services

        call_command("migrate", verbosity=0)
        registry_services.demo_models_register()
        user = get_user_model().objects.create_user("bench", password="bench-pass-123")
        client = Client(HTTP_HOST="127.0.0.1", raise_request_exception=False)
        client.force_login(user)
        # One ordinary recipe first: imports and caches warm, as on a server already running.
        client.post("/assembly/plan/", {"recipe": HEAD}, HTTP_HX_REQUEST="true")

        worst_web = (0.0, "")
        errors = []
        for name, text in cases().items():
            assert len(text.encode()) <= KB64, (name, len(text.encode()))
            web, parse = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                resp = client.post("/assembly/plan/", {"recipe": text}, HTTP_HX_REQUEST="true")
                web.append(time.perf_counter() - t0)
                if resp.status_code != 200 and f"{name}: HTTP {resp.status_code}" not in errors:
                    errors.append(f"{name}: HTTP {resp.status_code}")
                t0 = time.perf_counter()
                try:
                    parse_recipe(text)
                    outcome = "parsed"
                except RecipeError as exc:
                    outcome = str(exc).splitlines()[0][:70]
                parse.append(time.perf_counter() - t0)
            worst_web = max(worst_web, (max(web), name))
            print(f"{name:<30} {len(text.encode()):>6} B  plan page {max(web) * 1000:7.1f} ms  "
                  f"parse_recipe {max(parse) * 1000:6.1f} ms  HTTP {resp.status_code}  {outcome}")
        seconds, name = worst_web
        print(f"hostile recipes up to 64 KB: worst plan request {seconds * 1000:.0f} ms ({name}) over "
              f"{len(cases())} recipes x {args.repeat}; target <= 1 s: "
              f"{'met' if seconds <= 1 and not errors else 'MISSED'}"
              + (f"; errors: {'; '.join(errors)}" if errors else "; 0 errors"))


if __name__ == "__main__":
    main()
