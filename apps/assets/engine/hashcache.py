"""Known sha256 of files, keyed by where they are and what they look like, so unchanged files are
not read again (a re-import of a 15 GB model folder with link=True costs a few stats).

Keyed by (st_dev, st_ino, st_size, st_mtime_ns): one row per inode, replaced when the file's size
or mtime changes. A cache, never the truth: a failing database only costs a re-hash.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS file_hash (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (dev, ino)
)
"""


class HashCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(sqlite3.Error), self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    @contextlib.contextmanager
    def _connect(self):
        # A connection per call: ingests run on several threads and processes at once.
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def get(self, st: os.stat_result) -> str | None:
        try:
            with self._connect() as db:
                row = db.execute(
                    "SELECT sha256 FROM file_hash WHERE dev=? AND ino=? AND size=? AND mtime_ns=?",
                    (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
                ).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def put(self, st: os.stat_result, sha256: str) -> None:
        with contextlib.suppress(sqlite3.Error), self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO file_hash (dev, ino, size, mtime_ns, sha256) VALUES (?, ?, ?, ?, ?)",
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256),
            )
