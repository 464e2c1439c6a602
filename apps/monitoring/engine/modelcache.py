"""Loaded models kept between jobs in a long-lived heavy worker, least recently used first
out, within a memory budget.

A heavy job that evaluates, validates or generates asks `model_cache().get(...)` (or the
`load_causal_lm` / `load_tokenizer` shortcuts) instead of loading from disk; the second job
on the same model finds it loaded. Fine-tuning never takes a model from here: it changes the
weights it trains.

A key is (resolved folder, fingerprint of its weight and config files: names, sizes and
mtimes, dtype, device, load kind), so a folder whose files change is loaded afresh and the
stale entry is never handed out again.

What the cache hands out is shared: the caller must not change it. Models are put in eval
mode with every parameter's `requires_grad` off; callers run them under `torch.no_grad()`,
and apply an adapter on a copy (`copy.deepcopy`), never on the cached model itself.

The budget: `AUDOBON_MODEL_CACHE_BYTES` (bytes; default a quarter of this machine's RAM; 0
turns the cache off). A model bigger than the budget is loaded but not kept.

Each process with a cache writes its numbers to `<stats_dir>/<worker>.json` (atomically) on
every change, for `audobon cache stats` and the storage page; `request_clear(stats_dir)`
writes a request file that every cache honours before its next use and within a few
seconds while idle (a watcher thread), by dropping what it loaded before the request.

No Django here: it runs in the worker, in a command, or in a test alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_BUDGET = "AUDOBON_MODEL_CACHE_BYTES"
CLEAR_FILE = "clear-request.json"
WATCH_EVERY_S = 2.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt")


class ModelCacheConfigError(ValueError):
    """The budget setting is not a number of bytes."""


def default_budget() -> int:
    """`AUDOBON_MODEL_CACHE_BYTES`, else a quarter of the machine's RAM."""
    raw = os.environ.get(ENV_BUDGET, "").strip()
    if raw:
        if not raw.isdigit():
            raise ModelCacheConfigError(f"{ENV_BUDGET}={raw!r} is not a whole number of bytes "
                                        "(0 turns the model cache off)")
        return int(raw)
    import psutil

    return int(psutil.virtual_memory().total // 4)


def folder_fingerprint(path: Path | str) -> tuple:
    """(name, size, mtime_ns) of the weight, config and tokenizer files of a model folder
    (or of the one file `path` names): what makes a loaded copy stale when it changes."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    out = []
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return ()
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(WEIGHT_SUFFIXES):
            continue
        try:
            st = entry.stat()  # follows links: a hub snapshot's files are links to blobs
        except OSError:
            continue
        out.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def model_nbytes(model: Any) -> int:
    """Bytes of a torch module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()] if hasattr(model, "parameters") else []
    for t in tensors:
        key = (t.data_ptr(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


@dataclass
class _Entry:
    value: Any
    nbytes: int
    label: str
    loaded_at: float
    load_seconds: float
    hits: int = 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    uncacheable: int = 0  # loads bigger than the whole budget, handed out but not kept
    cleared: int = 0
    extra: dict = field(default_factory=dict)


class ModelCache:
    """An LRU map of loaded objects within `budget` bytes. Thread-safe; a load of one key
    happens once even when two threads ask for it together (they wait on one lock)."""

    def __init__(self, budget: int | None = None, *, stats_dir: Path | None = None,
                 name: str | None = None, watch: bool = True):
        self.budget = default_budget() if budget is None else int(budget)
        self.stats_dir = Path(stats_dir) if stats_dir else None
        self.name = name or f"pid-{os.getpid()}"
        self.watch = watch
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self._started = time.time()

    # --- reading ----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:  # an empty cache is still a cache
        return True

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def get(self, key: tuple, loader: Callable[[], Any], *, label: str = "",
            nbytes: Callable[[Any], int] = model_nbytes) -> tuple[Any, bool]:
        """(the object for `key`, whether it came from the cache). On a miss `loader()`
        makes it; it is kept when it fits the budget, evicting the least recently used."""
        self._honour_clear_request()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.hits += 1
                self.stats.hits += 1
                self._write_stats()
                return entry.value, True
            self.stats.misses += 1
            if not self.enabled:
                self._write_stats()
                return loader(), False
            start = time.perf_counter()
            value = loader()
            size = int(nbytes(value))
            if size > self.budget:
                self.stats.uncacheable += 1
                self._write_stats()
                return value, False
            self._make_room(size)
            self._entries[key] = _Entry(value=value, nbytes=size, label=label or str(key[0]),
                                        loaded_at=time.time(), load_seconds=time.perf_counter() - start)
            self._write_stats()
            self._start_watcher()
            return value, False

    # --- freeing ----------------------------------------------------------------------

    def _make_room(self, size: int) -> None:
        while self._entries and self.bytes + size > self.budget:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def release(self, size: int) -> int:
        """Evict least recently used entries until `size` bytes were freed or none is left
        (a job about to load something big outside the cache makes room). Bytes freed."""
        freed = 0
        with self._lock:
            while self._entries and freed < size:
                _, entry = self._entries.popitem(last=False)
                freed += entry.nbytes
                self.stats.evictions += 1
            if freed:
                self._after_free()
        return freed

    def clear(self, *, before: float | None = None) -> int:
        """Drop every entry (or those loaded before `before`, a time.time()). Bytes freed."""
        with self._lock:
            drop = [k for k, e in self._entries.items() if before is None or e.loaded_at <= before]
            freed = sum(self._entries.pop(k).nbytes for k in drop)
            if drop:
                self.stats.cleared += len(drop)
                self._after_free()
        return freed

    def _after_free(self) -> None:
        import gc

        gc.collect()
        with contextlib.suppress(Exception):
            import sys

            torch = sys.modules.get("torch")  # only if this process already uses it
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._write_stats()

    def _honour_clear_request(self) -> None:
        at = clear_requested_at(self.stats_dir) if self.stats_dir else None
        if at is None:
            return
        with self._lock:
            if any(e.loaded_at <= at for e in self._entries.values()):
                self.clear(before=at)

    def _start_watcher(self) -> None:
        if not self.watch or self.stats_dir is None or self._watcher is not None:
            return

        def watch():
            while not self._stopped.wait(WATCH_EVERY_S):
                with contextlib.suppress(Exception):
                    self._honour_clear_request()

        self._watcher = threading.Thread(target=watch, daemon=True, name="model-cache-watch")
        self._watcher.start()

    def close(self) -> None:
        self._stopped.set()

    # --- numbers ----------------------------------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            lookups = self.stats.hits + self.stats.misses
            return {
                "worker": self.name, "pid": os.getpid(), "budget": self.budget,
                "enabled": self.enabled, "bytes": self.bytes, "entries": len(self._entries),
                "hits": self.stats.hits, "misses": self.stats.misses,
                "evictions": self.stats.evictions, "uncacheable": self.stats.uncacheable,
                "cleared": self.stats.cleared,
                "hit_rate": round(self.stats.hits / lookups, 4) if lookups else None,
                "models": [{"label": e.label, "bytes": e.nbytes, "hits": e.hits,
                            "load_seconds": round(e.load_seconds, 3), "loaded_at": e.loaded_at}
                           for e in reversed(self._entries.values())],  # most recent first
                "started_at": self._started, "updated_at": time.time(),
            }

    def _write_stats(self) -> None:
        if self.stats_dir is None:
            return
        with contextlib.suppress(OSError):
            self.stats_dir.mkdir(parents=True, exist_ok=True)
            path = self.stats_dir / f"{safe_name(self.name)}.json"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.snapshot()))
            os.replace(tmp, path)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120] or "cache"


# --- requests and stats across processes ---------------------------------------------------

def request_clear(stats_dir: Path) -> float:
    """Ask every cache writing to `stats_dir` to drop what it holds now. Returns the time
    of the request."""
    stats_dir = Path(stats_dir)
    stats_dir.mkdir(parents=True, exist_ok=True)
    at = time.time()
    tmp = stats_dir / f".{CLEAR_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"at": at}))
    os.replace(tmp, stats_dir / CLEAR_FILE)
    return at


def clear_requested_at(stats_dir: Path) -> float | None:
    try:
        data = json.loads((Path(stats_dir) / CLEAR_FILE).read_text())
        return float(data["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stats_read(stats_dir: Path, *, alive: Callable[[dict], bool] | None = None) -> list[dict]:
    """The stats each cache wrote under `stats_dir`, of the processes `alive` accepts
    (default: a process with that pid still runs on this machine); files of processes that
    are gone are removed."""
    import psutil

    out = []
    stats_dir = Path(stats_dir)
    if not stats_dir.is_dir():
        return out
    for path in sorted(stats_dir.glob("*.json")):
        if path.name == CLEAR_FILE:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        live = alive(data) if alive is not None else _pid_alive_here(data, psutil)
        if not live:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(data)
    return out


def _pid_alive_here(data: dict, psutil) -> bool:
    """A worker of this machine (ids are HOST:PID:QUEUE) whose process still runs; one of
    another machine sharing the home cannot be checked from here and counts as alive."""
    import socket

    host = str(data.get("worker") or "").split(":", 1)[0]
    if ":" in str(data.get("worker") or "") and host != socket.gethostname():
        return True
    try:
        return psutil.pid_exists(int(data.get("pid") or 0))
    except (TypeError, ValueError):
        return False


# --- the process's cache and the loaders that use it ----------------------------------------

_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def model_cache() -> ModelCache:
    """This process's cache. In a worker (`AUDOBON_WORKER_ID` set) it keeps models within
    the budget and writes its stats to `$AUDOBON_HOME/cache/models/`; in any other process
    (a one-shot command, which loads each model once anyway) it is off unless
    `AUDOBON_MODEL_CACHE_BYTES` is set, and writes no stats."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            stats_dir = None
            worker = os.environ.get("AUDOBON_WORKER_ID")
            if worker:
                from audobon_site.home import audobon_home

                stats_dir = audobon_home() / "cache" / "models"
            budget = None if worker or os.environ.get(ENV_BUDGET, "").strip() else 0
            _CACHE = ModelCache(budget, stats_dir=stats_dir, name=worker)
        return _CACHE


def model_cache_reset(cache: ModelCache | None = None) -> None:
    """Replace this process's cache (tests; a new budget)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is not None:
            _CACHE.close()
        _CACHE = cache


def cache_key(kind: str, path: Path | str, dtype: str, device: str) -> tuple:
    """The key a load of `path` is kept under."""
    real = Path(os.path.realpath(path))
    return (str(real), folder_fingerprint(real), str(dtype), str(device), kind)


def load_causal_lm(path: Path | str, *, dtype: Any = "auto", device: str = "cpu",
                   cache: ModelCache | None = None, use_cache: bool = True,
                   label: str | None = None) -> tuple[Any, bool]:
    """(a causal LM from `path` on `device`, in eval mode with gradients off; whether it was
    cached). Shared when cached: run it under no_grad and never change it. `label` names it
    in the stats (default: the folder's name)."""
    from transformers import AutoModelForCausalLM

    def load():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    if not use_cache:
        return load(), False
    cache = model_cache() if cache is None else cache
    return cache.get(cache_key("causal_lm", Path(path), str(dtype), device), load,
                     label=f"{label or Path(path).name} ({str(dtype).removeprefix('torch.')}, {device})")


def load_tokenizer(path: Path | str, *, pad_to_eos: bool = False, cache: ModelCache | None = None,
                   use_cache: bool = True, label: str | None = None) -> tuple[Any, bool]:
    """(the tokenizer of `path`, whether it was cached); with `pad_to_eos` a missing pad
    token is the end-of-sequence token (set here, so callers never change a shared one)."""
    from transformers import AutoTokenizer

    def load():
        tok = AutoTokenizer.from_pretrained(path)
        if pad_to_eos and tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    if not use_cache:
        return load(), False
    cache = model_cache() if cache is None else cache

    def size(_tok) -> int:  # about what its files hold; tokenizers are small beside models
        return sum(s for name, s, _mtime in folder_fingerprint(path)
                   if not name.endswith((".safetensors", ".bin", ".gguf", ".pt", ".pth")))

    return cache.get(cache_key("tokenizer+pad" if pad_to_eos else "tokenizer", Path(path), "-", "-"), load,
                     label=f"{label or Path(path).name} (tokenizer)", nbytes=size)
