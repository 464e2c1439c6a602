"""kill -9 in the middle of an ingest or a backup: only temp files remain, never a wrong result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from apps.assets.engine.store import BlobStore

REPO = Path(__file__).resolve().parents[2]
SIZE = 32 << 20

# The child slows itself down (a reporter whose cancel check sleeps between 4 MiB chunks) so
# the kill lands mid-copy with a few MB of data instead of hundreds.
CHILD = """
import sys, time
from pathlib import Path
from apps.assets.engine.store import BlobStore
from apps.assets.engine.archive import backup_write

class Slow:
    def step(self, done, total=None, **metrics): pass
    def log(self, msg): pass
    def cancelled(self):
        time.sleep(0.1)
        return False

store = BlobStore(Path(sys.argv[2]))
if sys.argv[1] == "ingest":
    store.ingest_file(Path(sys.argv[3]), reporter=Slow())
else:
    backup_write(Path(sys.argv[3]), store=store, shas=[sys.argv[4]], tables=b"{}", meta={}, reporter=Slow())
print("finished")
"""


def write_data(path: Path, size: int) -> bytes:
    block = bytearray(os.urandom(1 << 20))
    with open(path, "wb") as fh:
        for i in range(size >> 20):
            block[:8] = i.to_bytes(8, "little")
            fh.write(block)
    return bytes(block)


def kill_when(proc: subprocess.Popen, folder: Path, pattern: str, timeout: float = 30) -> Path:
    """SIGKILL `proc` once a file matching `pattern` in `folder` holds data; returns that file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.glob(pattern):
            try:
                if path.stat().st_size > 0:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    return path
            except FileNotFoundError:
                continue
        if proc.poll() is not None:
            raise AssertionError(f"child ended before the kill: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no temp file appeared")


def child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_during_ingest_leaves_only_temp_files(tmp_path):
    src = tmp_path / "big.bin"
    write_data(src, SIZE)
    store = BlobStore(tmp_path / "store")
    proc = child("ingest", str(store.root), str(src))
    temp = kill_when(proc, store.tmp, "ingest-*")
    assert proc.returncode == -signal.SIGKILL
    assert temp.exists() and temp.stat().st_size < SIZE  # killed mid-copy
    assert store.usage() == (0, 0)  # no blob at all, so none with wrong content
    assert store.verify().ok
    assert store.clean_tmp() >= 1
    assert list(store.tmp.iterdir()) == []
    # The store works on: the same file ingests cleanly.
    entry = store.ingest_file(src)
    assert store.verify({entry.sha256: SIZE}).ok


def test_kill_during_backup_leaves_no_file_at_the_destination(tmp_path):
    src = tmp_path / "big.bin"
    write_data(src, SIZE)
    store = BlobStore(tmp_path / "store")
    entry = store.ingest_file(src)
    out = tmp_path / "backups"
    out.mkdir()
    dest = out / "library.tar"
    proc = child("backup", str(store.root), str(dest), entry.sha256)
    temp = kill_when(proc, out, ".library.tar.tmp-*")
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists()
    assert [p.name for p in out.iterdir()] == [temp.name]
    assert store.verify().ok  # the store it read from is untouched
