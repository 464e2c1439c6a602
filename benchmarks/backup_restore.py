"""Backup and restore of a large library: import --size of data as assets, back it up to one
.tar (verified as it is written), restore it into a new empty library (fresh database and
store), verify the restored store and compare every manifest.

    python benchmarks/backup_restore.py [--size 5G] [--dir /work]

Prints the time of each phase and its throughput, and as a baseline in the same run the
time of `tar -cf` of the same source files (a plain copy into an archive, no hashing).
Pass: the restored library verifies clean and its manifests are identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def make_sources(root: Path, total: int, files_per_asset: int = 4,
                 asset_bytes: int = 512 << 20) -> list[Path]:
    block = os.urandom(1 << 20)
    folders, written, n = [], 0, 0
    while written < total:
        folder = root / f"asset-{n:03d}"
        folder.mkdir(parents=True)
        per_file = min(asset_bytes, total - written) // files_per_asset or 1
        for i in range(files_per_asset):
            with (folder / f"part-{i}.bin").open("wb") as fh:
                left = per_file
                counter = (n * files_per_asset + i) << 32  # every file's content is its own
                while left > 0:
                    chunk = (counter.to_bytes(8, "little") + block)[: min(left, 1 << 20)]
                    fh.write(chunk)
                    left -= len(chunk)
                    counter += 1
            written += per_file
        folders.append(folder)
        n += 1
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="5G")
    parser.add_argument("--dir", default=None, help="where to put the data (default: a temp dir)")
    args = parser.parse_args()
    total = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="audobon-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        os.environ["AUDOBON_HOME"] = str(tmp / "home-a")
        os.environ.pop("AUDOBON_DATABASE_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "audobon_site.settings"
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from apps.assets import services
        from apps.assets.models import Asset, AssetVersion, RecoveryPoint

        call_command("migrate", verbosity=0)
        folders = make_sources(tmp / "src", total)
        gb = total / 1e9

        t0 = time.monotonic()
        subprocess.run(["tar", "-cf", str(tmp / "baseline.tar"), "-C", str(tmp / "src"), "."], check=True)
        t_tar = time.monotonic() - t0
        (tmp / "baseline.tar").unlink()

        t0 = time.monotonic()
        for folder in folders:
            services.asset_import(source=folder, kind="other")
        t_import = time.monotonic() - t0
        manifests = {str(v.pk): v.manifest for v in AssetVersion.objects.all()}

        t0 = time.monotonic()
        services.library_backup(dest=tmp / "library.tar")
        t_backup = time.monotonic() - t0

        # A second machine: empty database, empty store.
        AssetVersion.objects.all().delete()
        Asset.objects.all().delete()
        RecoveryPoint.objects.all().delete()
        settings.AUDOBON_HOME = tmp / "home-b"
        (settings.AUDOBON_HOME / "store").mkdir(parents=True)
        t0 = time.monotonic()
        services.library_restore(path=tmp / "library.tar")
        t_restore = time.monotonic() - t0
        t0 = time.monotonic()
        report, _ = services.store_verify()
        t_verify = time.monotonic() - t0
        same = {str(v.pk): v.manifest for v in AssetVersion.objects.all()} == manifests

        for label, secs in (("tar -cf baseline", t_tar), ("import", t_import),
                            ("backup (write + verify)", t_backup), ("restore", t_restore),
                            ("verify restored store", t_verify)):
            print(f"{label:>24}: {secs:7.1f} s  {gb / secs * 1000:7.0f} MB/s"
                  + (f"  ({secs / t_tar:.2f}x tar)" if label != "tar -cf baseline" else ""))
        print(f"backup + restore of {gb:.1f} GB: restored store verifies "
              f"{'clean' if report.ok else 'DAMAGED'} ({report.checked} blobs); "
              f"manifests {'identical' if same else 'DIFFERENT'}")
        if not (report.ok and same):
            sys.exit(1)


if __name__ == "__main__":
    main()
