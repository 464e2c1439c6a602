"""Finding models on disk without reading their weights: plain folders and the Hugging
Face hub cache, with a cheap fingerprint (names, sizes, mtimes) so a rescan only
re-inspects what changed."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from apps.assets.engine.paths import hf_hub_cache, is_within, link_root, resolved

WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "adapter_model.bin")
MARKER_FILES = ("config.json", "adapter_config.json", "model.safetensors.index.json")
# Never descend into these while looking for models.
SKIP_DIRS = {".git", "__pycache__", "node_modules", ".venv", "blobs", ".cache", "refs", ".locks"}
MAX_DEPTH = 6
MAX_FILES_PER_MODEL = 5000

# What a registered model folder exposes: weights, configs, tokenizer files, cards and adapter
# files. Anything else in the folder (dotfiles, scripts, notes, keys) is never listed.
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".gguf", ".model", ".tiktoken",
                       ".md", ".msgpack", ".h5", ".onnx", ".yaml", ".yml", ".jinja")
MODEL_FILE_NAMES = ("vocab.txt", "merges.txt", "added_tokens.txt")
CARD_PREFIXES = ("readme", "license", "licence", "notice", "use_policy", "usage_policy")


@dataclass(frozen=True)
class FoundModel:
    path: Path  # the folder holding the model's files (an HF snapshot for the hub cache)
    name: str  # "folder-name", or "org/name" from the hub cache
    source: str  # "folder" | "hf-cache"
    fingerprint: str


def default_hf_cache() -> Path | None:
    """The hub cache this user's Hugging Face tools write to, if there is one."""
    return hf_hub_cache()


def fingerprint(folder: Path) -> str:
    """A hash of the names, sizes and mtimes of the files directly in `folder` (a symlinked
    HF snapshot is fingerprinted through its links). Unreadable entries are left out."""
    h = hashlib.sha256()
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return h.hexdigest()
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def is_model_file(rel: str) -> bool:
    """A file a model folder may expose, by its relative path: no dot part anywhere, and a
    weights, config, tokenizer, card or adapter file by its name."""
    parts = rel.split("/")
    if any(not p or p.startswith(".") for p in parts):
        return False
    name = parts[-1].lower()
    return (name.endswith(MODEL_FILE_SUFFIXES) or name in MODEL_FILE_NAMES
            or name.startswith(CARD_PREFIXES))


@dataclass
class ModelListing:
    files: list[tuple[str, Path, int]] = field(default_factory=list)  # (relative path, path, size)
    skipped: list[str] = field(default_factory=list)  # "<relative path>: skipped, … (reason)"
    escapes: list[str] = field(default_factory=list)  # relative paths of links leaving the folder


def list_model_files(folder: Path, *, limit: int = MAX_FILES_PER_MODEL) -> ModelListing:
    """The model files of a folder (see `is_model_file`), sorted by relative path. Symlinks are
    followed only inside the folder (a hub cache snapshot: inside its repo); one that leaves it
    is listed in `escapes`, never in `files`. An entry that cannot be read is skipped and
    named in `skipped`; the listing goes on."""
    folder = Path(folder)
    listing = ModelListing()
    boundary = link_root(folder)
    seen_dirs = {resolved(folder)}

    def walk(current: Path, prefix: str) -> None:
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            listing.skipped.append(f"{prefix or '.'}: skipped, cannot be read ({exc.strerror or exc})")
            return
        for entry in entries:
            if len(listing.files) >= limit:
                return
            rel = prefix + entry.name
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_link = entry.is_symlink()
                real = resolved(path) if is_link else path
                st = os.stat(path)
            except OSError as exc:
                listing.skipped.append(f"{rel}: skipped, cannot be read ({exc.strerror or exc})")
                continue
            if is_link and not is_within(real, boundary):
                if stat.S_ISDIR(st.st_mode) or is_model_file(rel):
                    listing.escapes.append(rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                real_dir = resolved(path)
                if real_dir in seen_dirs:
                    continue
                seen_dirs.add(real_dir)
                walk(path, rel + "/")
            elif stat.S_ISREG(st.st_mode) and is_model_file(rel):
                listing.files.append((rel, path, st.st_size))

    walk(folder, "")
    listing.files.sort(key=lambda item: item[0])
    return listing


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
        rev = ref.read_text(errors="replace").strip()
        if rev and "/" not in rev and not rev.startswith(".") and (snapshots / rev).is_dir():
            return snapshots / rev
    revs = []
    for p in snapshots.iterdir():
        try:
            if p.is_dir():
                revs.append((p.stat().st_mtime, p))
        except OSError:
            continue
    return max(revs)[1] if revs else None


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a link loop, a permission: not a file we can use
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def find_models(root: Path, warnings: list[str] | None = None) -> list[FoundModel]:
    """Every model folder under `root`: an HF hub cache (`models--org--name/…`) or any
    folder tree, where a folder with safetensors weights (or a config and pickle weights)
    is a model. An entry that cannot be read is skipped, and named in `warnings` when given."""
    root = Path(root)
    warnings = warnings if warnings is not None else []
    found: list[FoundModel] = []
    if not root.is_dir():
        return found
    for repo in sorted(root.glob("models--*")):
        try:
            snap = _hf_snapshot(repo)
        except OSError as exc:
            warnings.append(f"{repo}: skipped, cannot be read ({exc.strerror or exc})")
            continue
        if snap is not None:
            name = repo.name[len("models--"):].replace("--", "/")
            found.append(FoundModel(snap, name, "hf-cache", fingerprint(snap)))
    if found:
        return found
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            warnings.append(f"{folder}: skipped, cannot be read ({exc.strerror or exc})")
            continue
        names = {e.name for e in entries if _is_file(e)}
        if _is_model_folder(names):
            found.append(FoundModel(folder, folder.name, "folder", fingerprint(folder)))
            continue  # a model's subfolders are its own business
        if depth < MAX_DEPTH:
            for e in sorted(entries, key=lambda e: e.name, reverse=True):
                if _is_dir(e) and e.name not in SKIP_DIRS and not e.name.startswith("."):
                    stack.append((Path(e.path), depth + 1))
    return sorted(found, key=lambda m: str(m.path))
