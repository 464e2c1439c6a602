"""The filesystem boundary of the web: the one place that decides "may the web read this path".

The web (forms, recipes typed in the editor, anything a browser names) reads only under
AUDOBON_HOME and the configured import roots: `AUDOBON_IMPORT_ROOTS` (os.pathsep-separated,
from the settings or the environment) plus the Hugging Face hub cache. Symlinks are resolved
before the check, dot-folders below a root are refused, and so are the private parts of
AUDOBON_HOME (see HOME_PRIVATE_PREFIXES). The command line keeps any path: the local user may
read what they like.

A refusal names the allowed roots and says nothing about whether the path exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from django.conf import settings

from apps.assets.engine.paths import containing_root, hf_hub_cache, is_within, resolved


class PathNotAllowedError(ValueError):
    """A path the web may not read; the message lists the roots it may read under."""


# Directly in AUDOBON_HOME, never for a path the web names: the database, the queue, the
# secret key and the logs; and the library's own folders (store, job scratch and uploads,
# version folders, backups), whose content the web reaches by asset name only, so that a
# typed path never steps around who may see which asset.
HOME_PRIVATE_PREFIXES = ("db.sqlite3", "queue.db", "secret_key", "logs", "store", "work", "cache",
                         "backups")


def import_roots() -> list[Path]:
    """The configured import roots: settings.AUDOBON_IMPORT_ROOTS (a list, or a string
    separated like PATH), else the environment variable of that name."""
    raw = getattr(settings, "AUDOBON_IMPORT_ROOTS", None)
    if raw is None:
        raw = os.environ.get("AUDOBON_IMPORT_ROOTS", "")
    items = raw.split(os.pathsep) if isinstance(raw, str) else list(raw)
    return [Path(str(p)).expanduser() for p in items if str(p).strip()]


def web_roots() -> list[Path]:
    """Every folder the web may read under: AUDOBON_HOME, the import roots, the hub cache."""
    roots = [Path(settings.AUDOBON_HOME), *import_roots()]
    hub = hf_hub_cache()
    if hub is not None:
        roots.append(hub)
    return roots


def roots_text() -> str:
    return ", ".join(str(r) for r in web_roots())


def _refusal(raw: str) -> PathNotAllowedError:
    return PathNotAllowedError(
        f"{raw!r} is not a path the web may read: it must be under one of {roots_text()} "
        "(an admin adds folders with AUDOBON_IMPORT_ROOTS)")


def _home_private(real: Path) -> bool:
    home = resolved(settings.AUDOBON_HOME)
    if real == home:
        return True  # a scan of the whole home would walk into the private parts
    if not real.is_relative_to(home):
        return False
    return real.relative_to(home).parts[0].startswith(HOME_PRIVATE_PREFIXES)


def web_path_check(raw: str | Path) -> Path:
    """The resolved path when the web may read it, else PathNotAllowedError. Relative paths
    and `~` are refused outright: the server's working folder and home mean nothing to a
    browser. Nothing here tells whether the path exists."""
    text = str(raw).strip()
    if not text or "\0" in text or not os.path.isabs(text):
        raise _refusal(text)
    real = resolved(text)
    if containing_root(real, web_roots()) is None or _home_private(real):
        raise _refusal(text)
    return real


def web_may_read(raw: str | Path) -> bool:
    try:
        web_path_check(raw)
    except PathNotAllowedError:
        return False
    return True


# Folders Audobon itself registers models from outside the roots (the demo model a package
# ships): a restored in-place location may point there too. Filled by the apps above.
_LOCATION_ROOT_PROVIDERS: list[Callable[[], Iterable[Path]]] = []


def location_roots_provider(fn: Callable[[], Iterable[Path]]) -> Callable[[], Iterable[Path]]:
    _LOCATION_ROOT_PROVIDERS.append(fn)
    return fn


def location_check(location: str) -> Path:
    """A folder a version may be referenced in place from (a backup's row, say): absolute and
    under the roots, the same rule as the web's, or one of the folders Audobon registers
    models from itself."""
    try:
        return web_path_check(location)
    except PathNotAllowedError:
        if os.path.isabs(str(location)) and "\0" not in str(location):
            real = resolved(location)
            for provider in _LOCATION_ROOT_PROVIDERS:
                if any(is_within(real, resolved(root)) for root in provider()):
                    return real
        raise
