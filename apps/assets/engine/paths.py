"""Where a path may lead: clean relative paths inside a folder, containment after symlinks are
resolved, and the folders a model referenced in place may point into. Plain paths, no Django:
the web's roots are decided by the caller (apps/assets/roots.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from apps.assets.engine.errors import UnsafePathError

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def clean_relative(rel: str) -> PurePosixPath:
    """A posix path relative to its folder that cannot leave it or hide in it: not empty, not
    absolute, no `.`, `..` or empty part, no backslash or NUL, no part starting with a dot."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError(f"file path {rel!r} is empty or not text")
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or "\0" in rel or re.match(r"^[A-Za-z]:", rel):
        raise UnsafePathError(f"file path {rel!r} is absolute or not a plain posix path")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"file path {rel!r} has {'an empty' if not part else f'a {part!r}'} part")
        if part.startswith("."):
            raise UnsafePathError(f"file path {rel!r} names a dotfile or dot-folder ({part!r})")
    return PurePosixPath(rel)


def is_within(path: Path, root: Path) -> bool:
    """`path` is `root` or below it (both taken as they are: resolve them first)."""
    return path == root or path.is_relative_to(root)


def resolved(path: Path | str) -> Path:
    """The absolute path with every symlink followed (what would really be opened); a path
    that does not exist is resolved as far as it goes."""
    return Path(os.path.realpath(Path(path).expanduser()))


def containing_root(path: Path | str, roots: Iterable[Path]) -> Path | None:
    """The first root (resolved) holding `path` once its symlinks are resolved, with no dot
    part below the root; None when no root does."""
    real = resolved(path)
    for root in roots:
        real_root = resolved(root)
        if is_within(real, real_root):
            below = real.relative_to(real_root).parts
            if any(part.startswith(".") for part in below):
                return None
            return real_root
    return None


def hf_repo_of(folder: Path) -> Path | None:
    """The hub cache repo folder (`models--org--name`) of a snapshot folder
    (`…/models--org--name/snapshots/<rev>`), or None for any other folder."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return None


def link_root(folder: Path) -> Path:
    """Where the files of a model folder may resolve to: the folder itself; for a hub cache
    snapshot, its repo folder (snapshot files are links to `../../blobs/<sha256>`)."""
    repo = hf_repo_of(Path(folder))
    return resolved(repo if repo is not None else folder)


def in_place_file(location: Path | str, rel: str) -> Path:
    """The file `rel` of a folder referenced in place, refused (UnsafePathError) when its path is
    not clean or when it resolves outside the folder (a symlink leaving it)."""
    clean_relative(rel)
    location = Path(location)
    if not location.is_absolute():
        raise UnsafePathError(f"location {str(location)!r} is not an absolute path")
    path = location / rel
    real = resolved(path)
    if not is_within(real, link_root(location)):
        raise UnsafePathError(f"{rel}: a link that leaves the model folder; not served")
    return path


def hf_hub_cache() -> Path | None:
    """The hub cache this user's Hugging Face tools write to, if one is configured or exists."""
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub = home / "hub"
    return hub if hub.is_dir() else None
