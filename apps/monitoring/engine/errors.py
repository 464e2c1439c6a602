"""The signature an exception is grouped by: its type and the functions it passed
through (file and function names, no line numbers and no message), so the same failure
from different inputs and after small edits lands in one group. Django-free."""

from __future__ import annotations

import hashlib
import traceback
from pathlib import Path

FRAMES = 8  # the innermost frames that make up a signature


def error_signature(exc: BaseException) -> tuple[str, str]:
    """(sha256 hex of the signature, the readable signature)."""
    frames = traceback.extract_tb(exc.__traceback__)[-FRAMES:]
    where = " < ".join(f"{_short(f.filename)}:{f.name}" for f in reversed(frames))
    text = f"{type(exc).__module__}.{type(exc).__qualname__}" + (f" at {where}" if where else "")
    return hashlib.sha256(text.encode()).hexdigest(), text


def _short(filename: str) -> str:
    """A path without the parts that differ between machines: from `apps/` or the
    package folder on."""
    parts = Path(filename).parts
    for anchor in ("apps", "audobon_site", "site-packages", "dist-packages"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + (anchor.endswith("packages")):])
    return Path(filename).name
