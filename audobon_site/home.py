"""Where Audobon keeps everything ($AUDOBON_HOME) and the secret key inside it.

Django-free on purpose: the `audobon` command and the settings module both use it
before Django is configured.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name
SUBDIRS = ("store", "work", "cache", "backups", "logs")


def audobon_home() -> Path:
    """$AUDOBON_HOME, or the platform's user data dir; created if missing."""
    raw = os.environ.get("AUDOBON_HOME")
    if raw:
        home = Path(raw).expanduser()
    else:
        import platformdirs

        home = Path(platformdirs.user_data_dir("audobon", appauthor=False))
    home.mkdir(parents=True, exist_ok=True)
    for sub in SUBDIRS:
        (home / sub).mkdir(exist_ok=True)
    return home.resolve()


def secret_key(home: Path) -> str:
    """Read the key kept in HOME, creating it (mode 0600) on first run.

    Created with O_EXCL under a temporary name and linked into place, so two
    processes starting together agree on one key and nobody reads a half-written file.
    """
    path = home / SECRET_KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = home / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable secret key; delete it to make a new one")
    return key
