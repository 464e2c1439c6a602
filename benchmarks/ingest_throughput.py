"""Ingest throughput: `BlobStore.ingest_file` (hash while copying, fsync, rename into the store)
against `sha256sum` reading the same file, both warm in the page cache, plus the ingest's peak RSS.

    python benchmarks/ingest_throughput.py                      # 2 GiB file, temp dir under $TMPDIR
    python benchmarks/ingest_throughput.py --size 512M --dir /mnt/models --repeat 5

Targets: ingest throughput >= 0.8x sha256sum's; ingest peak RSS <= 64 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
BLOCK = 1 << 20

# Runs in its own process so its ru_maxrss is the ingest's alone (interpreter and imports included).
INGEST = """
import json, resource, sys, time
from pathlib import Path
from apps.assets.engine.store import BlobStore
store = BlobStore(Path(sys.argv[2]))
started = time.perf_counter()
entry = store.ingest_file(Path(sys.argv[1]))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "sha256": entry.sha256,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2G, 512M, 1048576)")
    return int(match.group(1)) * UNITS[match.group(2).upper()]


def write_data(path: Path, size: int) -> None:
    # Random once, then a counter in each MiB: cheap to write, no block repeats, never all zeros.
    block = bytearray(os.urandom(BLOCK))
    with open(path, "wb") as fh:
        for i in range(0, size, BLOCK):
            block[:8] = (i // BLOCK).to_bytes(8, "little")
            fh.write(block[: min(BLOCK, size - i)])
        fh.flush()
        os.fsync(fh.fileno())  # else its writeback competes with the runs measured below


def read_once(path: Path) -> None:
    buf = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def time_sha256sum(path: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - started, out.split()[0]


def time_ingest(path: Path, store: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", INGEST, str(path), str(store)], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=2 << 30, help="file size, e.g. 2G (default), 512M")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the file and the store go (one filesystem); default: a temp dir")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is printed")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.dir))
    try:
        data = work / "data.bin"
        write_data(data, args.size)
        read_once(data)  # both measured runs then read from the page cache
        mb = args.size / 1e6
        sums, ingests = [], []
        for i in range(args.repeat):
            os.sync()  # the previous run's deletes and writeback settle before the next is timed
            seconds, digest = time_sha256sum(data)
            sums.append(seconds)
            os.sync()
            result = time_ingest(data, work / f"store-{i}")
            assert result["sha256"] == digest, "ingest and sha256sum disagree"
            ingests.append(result)
            shutil.rmtree(work / f"store-{i}")  # keep one copy of the data on disk at a time
        sum_s = statistics.median(sums)
        ingest_s = statistics.median(r["seconds"] for r in ingests)
        peak_mb = max(r["maxrss_kb"] for r in ingests) / 1024
        ratio = sum_s / ingest_s
        print(f"file: {args.size / (1 << 30):.2f} GiB in {work}, median of {args.repeat} runs")
        sum_runs = ", ".join(f"{mb / s:.0f}" for s in sums)
        ingest_runs = ", ".join(f"{mb / r['seconds']:.0f}" for r in ingests)
        print(f"sha256sum: {mb / sum_s:.0f} MB/s ({sum_s:.2f} s; runs: {sum_runs})")
        print(f"ingest_file: {mb / ingest_s:.0f} MB/s ({ingest_s:.2f} s, hash + copy + fsync + rename; "
              f"runs: {ingest_runs})")
        print(f"ratio ingest/sha256sum: {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'})")
        print(f"ingest peak RSS: {peak_mb:.1f} MB (target <= 64 MB: {'met' if peak_mb <= 64 else 'MISSED'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
