"""Finding models on disk without reading their weights: plain folders and the Hugging
Face hub cache, with a cheap fingerprint (names, sizes, mtimes) so a rescan only
re-inspects what changed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "adapter_model.bin")
MARKER_FILES = ("config.json", "adapter_config.json", "model.safetensors.index.json")
# Never descend into these while looking for models.
SKIP_DIRS = {".git", "__pycache__", "node_modules", ".venv", "blobs", ".cache", "refs", ".locks"}
MAX_DEPTH = 6


@dataclass(frozen=True)
class FoundModel:
    path: Path  # the folder holding the model's files (an HF snapshot for the hub cache)
    name: str  # "folder-name", or "org/name" from the hub cache
    source: str  # "folder" | "hf-cache"
    fingerprint: str


def default_hf_cache() -> Path | None:
    """The hub cache this user's Hugging Face tools write to, if there is one."""
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = home / "hub"
    return hub if hub.is_dir() else None


def fingerprint(folder: Path) -> str:
    """A hash of the names, sizes and mtimes of the files directly in `folder` (a symlinked
    HF snapshot is fingerprinted through its links)."""
    h = hashlib.sha256()
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            try:
                st = entry.stat()
            except OSError:
                continue
            if entry.is_file():
                h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _is_model_folder(names: set[str]) -> bool:
    if names & set(MARKER_FILES) and (any(n.endswith(WEIGHT_SUFFIXES) for n in names)
                                       or names & set(PICKLE_NAMES)):
        return True
    return any(n.endswith(WEIGHT_SUFFIXES) for n in names)


def _hf_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot `refs/main` points at, else the newest one."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        if (snapshots / rev).is_dir():
            return snapshots / rev
    revs = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return revs[-1] if revs else None


def find_models(root: Path) -> list[FoundModel]:
    """Every model folder under `root`: an HF hub cache (`models--org--name/…`) or any
    folder tree, where a folder with safetensors weights (or a config and pickle weights)
    is a model."""
    root = Path(root)
    found: list[FoundModel] = []
    if not root.is_dir():
        return found
    for repo in sorted(root.glob("models--*")):
        snap = _hf_snapshot(repo)
        if snap is not None:
            name = repo.name[len("models--"):].replace("--", "/")
            found.append(FoundModel(snap, name, "hf-cache", fingerprint(snap)))
    if found:
        return found
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        names = {e.name for e in entries if e.is_file()}
        if _is_model_folder(names):
            found.append(FoundModel(folder, folder.name, "folder", fingerprint(folder)))
            continue  # a model's subfolders are its own business
        if depth < MAX_DEPTH:
            for e in sorted(entries, key=lambda e: e.name, reverse=True):
                if e.is_dir(follow_symlinks=False) and e.name not in SKIP_DIRS:
                    stack.append((Path(e.path), depth + 1))
    return sorted(found, key=lambda m: str(m.path))
