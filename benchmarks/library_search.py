"""Library list plus search at 20,000 assets: the library page (the results partial that
search-as-you-type swaps in, and the whole page), rendered by Django in-process against
the embedded SQLite database with its FTS5 index.

    python benchmarks/library_search.py [--assets 20000] [--repeat 20]

Target: p95 <= 100 ms over all the queries below. As a baseline, the same run times the
bare `SELECT count(*)` of the asset table, to show what the database alone costs here.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = [
    "llama", "mistral", "qwen", "gpt2", "phi", "gemma", "chat", "instruct", "coder", "math", "vision",
    "tiny", "base", "merged", "dpo", "sft", "lora", "adapter", "alpaca", "sharegpt", "wiki", "books",
    "news", "legal", "medical", "finance",
]
KINDS = ["model", "adapter", "component", "dataset", "image", "report", "other"]
ARCHS = ["llama", "mistral", "qwen2", "gpt2", "phi3", "gemma2"]
QUERIES = ["", "llama", "chat instruct", "kind:model", "tag:t7", "arch:qwen2 kind:model",
           "coder tag:t3", "created:>2020-01-01 kind:dataset", "mis", "owner:me", "name:merged",
           "zzz-nothing"]


def populate(n: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from apps.assets import search
    from apps.assets.models import Asset, AssetVersion, Tag

    rng = random.Random(7)
    user = get_user_model().objects.create_user("bench", password="bench-pass-123")
    tags = [Tag.objects.create(name=f"t{i}") for i in range(50)]
    with transaction.atomic():
        assets = []
        for i in range(n):
            name = "-".join(rng.sample(WORDS, 3)) + f"-{i}"
            kind = rng.choice(KINDS)
            meta = {"architecture": rng.choice(ARCHS), "files": rng.randint(1, 20)}
            assets.append(Asset(kind=kind, name=name, owner=user if i % 3 == 0 else None,
                                description=" ".join(rng.sample(WORDS, 6)), metadata=meta,
                                head_number=1, size_bytes=rng.randint(1, 10**10)))
        Asset.objects.bulk_create(assets, batch_size=2000)
        AssetVersion.objects.bulk_create(
            [AssetVersion(asset=a, number=1, manifest={"f.bin": {"sha256": "0" * 64, "size": 1}},
                          metadata=a.metadata, size_bytes=a.size_bytes) for a in assets],
            batch_size=2000)
        through = Asset.tags.through
        through.objects.bulk_create(
            [through(asset_id=a.pk, tag_id=t.pk) for a in assets for t in rng.sample(tags, 3)],
            batch_size=5000)
        for a in Asset.objects.prefetch_related("tags"):
            search.index_update(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audobon-bench-") as tmp:
        os.environ["AUDOBON_HOME"] = tmp
        os.environ.pop("AUDOBON_DATABASE_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "audobon_site.settings"
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        call_command("migrate", verbosity=0)
        started = time.monotonic()
        populate(args.assets)
        print(f"made {args.assets} assets in {time.monotonic() - started:.1f} s")
        from django.contrib.auth import get_user_model

        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(get_user_model().objects.get(username="bench"))
        timings: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for q in QUERIES:
                for mode, headers in (("partial", {"HTTP_HX_REQUEST": "true"}), ("page", {})):
                    t0 = time.perf_counter()
                    resp = client.get("/library/", {"q": q}, **headers)
                    elapsed = (time.perf_counter() - t0) * 1000
                    assert resp.status_code == 200, resp.status_code
                    timings.setdefault(f"{mode} {q or '(all)'}", []).append(elapsed)
        base = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with connection.cursor() as cur:
                cur.execute("SELECT count(*) FROM assets_asset")
            base.append((time.perf_counter() - t0) * 1000)
        every = sorted(v for vs in timings.values() for v in vs)
        p95 = every[int(0.95 * (len(every) - 1))]
        worst = max(timings.items(), key=lambda kv: statistics.median(kv[1]))
        print(f"library list + search at {args.assets} assets: p50 {statistics.median(every):.1f} ms, "
              f"p95 {p95:.1f} ms over {len(every)} requests "
              f"(target p95 <= 100 ms: {'met' if p95 <= 100 else 'MISSED'}); "
              f"slowest query {worst[0]!r} median {statistics.median(worst[1]):.1f} ms; "
              f"baseline count(*) {statistics.median(base):.2f} ms")


if __name__ == "__main__":
    main()
