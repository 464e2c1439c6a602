"""`audobon cache stats [--json]` and `audobon cache clear [NAME] [--stale]`."""

from __future__ import annotations

import time

from apps.monitoring.foreground import ForegroundCommand

CLEAR_WAIT_S = 10.0  # how long `clear models` waits for the workers to report they dropped them


def _size(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Command(ForegroundCommand):
    help = ("The caches, with their size and hit rate: the heavy workers' model cache, assembly's "
            "result cache, thumbnails and the file hash cache. `cache stats`; `cache clear [NAME]` "
            "(models, assembly, thumbs, hashes; all without NAME), `--stale` with thumbs removes only "
            "thumbnails of images no version holds.")

    def add_arguments(self, parser):
        from apps.assets.storage_report import CACHE_NAMES

        parser.add_argument("action", choices=("stats", "clear"))
        parser.add_argument("name", nargs="?", choices=CACHE_NAMES, help="the cache to clear (default: all)")
        parser.add_argument("--stale", action="store_true", help="clear thumbs: only the stale ones")

    def handle(self, *args, action, name=None, stale=False, **opts):
        from apps.assets.storage_report import CACHE_NAMES, cache_clear, caches_report

        if action == "stats":
            if name or stale:
                raise ValueError("cache stats takes no NAME or --stale")
            rows = caches_report()
            self.emit({"caches": rows}, "\n".join(self._line(r) for r in rows))
            return
        if stale and name != "thumbs":
            raise ValueError("--stale goes with `cache clear thumbs`")
        done = [cache_clear(name=n, stale_only=stale) for n in ([name] if name else CACHE_NAMES)]
        lines = []
        for d in done:
            if d["cache"] == "models":
                workers = d["workers"]
                if not workers:
                    lines.append("models: no heavy worker holds a model cache now")
                    continue
                left = self._wait_for_workers()
                lines.append(f"models: asked {workers} heavy worker(s) to drop {d['entries']} loaded "
                             f"model(s), {_size(d['bytes'])}"
                             + ("; done" if left == 0 else f"; {_size(left)} still held (a running job "
                                                            "keeps its model until it ends)"))
                d["still_held"] = left
            else:
                what = "stale thumbnails" if d.get("stale_only") else "entries"
                lines.append(f"{d['cache']}: cleared {d['entries']} {what}, {_size(d['bytes'])}")
        self.emit({"cleared": done}, "\n".join(lines))

    @staticmethod
    def _wait_for_workers() -> int:
        from apps.assets.storage_report import model_stats_dir
        from apps.monitoring.engine.modelcache import clear_requested_at, stats_read

        asked = clear_requested_at(model_stats_dir()) or 0
        deadline = time.monotonic() + CLEAR_WAIT_S
        while True:
            workers = stats_read(model_stats_dir())
            held = sum(m["bytes"] for w in workers for m in w.get("models", []) if m["loaded_at"] <= asked)
            if held == 0 or time.monotonic() > deadline:
                return held
            time.sleep(0.2)

    @staticmethod
    def _line(r: dict) -> str:
        rate = "not counted" if r["hit_rate"] is None and r["hits"] is None else \
            "no lookups yet" if r["hit_rate"] is None else \
            f"{100 * r['hit_rate']:.0f}% ({r['hits']} hits, {r['misses']} misses)"
        line = f"{r['name']:<9} {r['title']}: {r['entries']} entries, {_size(r['bytes'])}, hit rate {rate}"
        if r["name"] == "models":
            line += (f"; {len(r['workers'])} heavy worker(s)" if r["workers"]
                     else "; no heavy worker running")
            for w in r["workers"]:
                line += f"\n          {w['worker']}: {_size(w['bytes'])} of {_size(w['budget'])}, " \
                        f"{w['evictions']} evictions"
                line += "".join(f"\n            {m['label']} {_size(m['bytes'])}, {m['hits']} hits"
                                for m in w["models"])
        if r["name"] == "thumbs" and r.get("stale"):
            line += f"; {r['stale']} stale ({_size(r['stale_bytes'])}): `audobon cache clear thumbs --stale`"
        return line
