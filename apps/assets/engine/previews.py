"""Previews of a stored file without downloading it: image thumbnails, the first rows of
a dataset, the first KB of text or JSON. Pillow is imported only when a thumbnail is made."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

from .safeparse import json_loads

TEXT_HEAD_BYTES = 1024
DATASET_ROWS = 20
THUMB_PX = 256
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
DATASET_SUFFIXES = {".jsonl", ".csv", ".tsv", ".parquet"}
TEXT_SUFFIXES = {".txt", ".md", ".json", ".yaml", ".yml", ".py", ".toml", ".cfg", ".ini", ".log",
                 ".jinja", ".model", ""}


def preview_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DATASET_SUFFIXES:
        return "dataset"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return "none"


def thumbnail(src: Path, dest: Path, *, max_px: int = THUMB_PX) -> Path:
    """A PNG no larger than max_px, made once and kept in dest (written atomically)."""
    if dest.exists():
        return dest
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        img.thumbnail((max_px, max_px))
        if img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA")
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        img.save(tmp, format="PNG")
    os.replace(tmp, dest)
    return dest


def text_head(src: Path, *, name: str, limit: int = TEXT_HEAD_BYTES) -> tuple[str, bool]:
    """(the first `limit` bytes as text, whether there is more). JSON that fits is indented.
    `name` is the file's name in its version (blobs have none)."""
    with src.open("rb") as fh:
        data = fh.read(limit + 1)
    more = len(data) > limit
    text = data[:limit].decode("utf-8", errors="replace")
    if not more and Path(name).suffix.lower() == ".json":
        with contextlib.suppress(ValueError):
            text = json.dumps(json_loads(text, max_bytes=None), indent=2)[: limit * 4]
    return text, more


def dataset_rows(src: Path, *, name: str,
                 limit: int = DATASET_ROWS) -> tuple[list[str], list[list[str]]]:
    """(columns, first rows as strings) of a JSONL, CSV, TSV or Parquet file called `name`."""
    suffix = Path(name).suffix.lower()
    records: list[dict] = []
    if suffix == ".jsonl":
        with src.open("rb") as fh:
            for line in fh:
                if len(records) >= limit:
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    value = json_loads(line, max_bytes=None)
                except ValueError:
                    value = {"(invalid JSON)": line[:200].decode("utf-8", errors="replace")}
                records.append(value if isinstance(value, dict) else {"value": value})
    elif suffix in (".csv", ".tsv"):
        with src.open("r", encoding="utf-8", errors="replace", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                if len(records) >= limit:
                    break
                records.append(row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # only the first batch is read, not the file

        first = next(pq.ParquetFile(src).iter_batches(batch_size=limit), None)
        records = first.to_pylist()[:limit] if first is not None else []
    columns: list[str] = []
    for rec in records:
        for key in rec:
            if key not in columns:
                columns.append(str(key))
    rows = [[_cell(rec.get(c)) for c in columns] for rec in records]
    return columns, rows


def _cell(value) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 300 else text[:300] + "…"


def model_summary(config_text: str | None, files: dict[str, int]) -> dict:
    """What a model folder says about itself, from config.json and the file list."""
    summary: dict = {}
    if config_text:
        try:
            config = json.loads(config_text)
        except ValueError:
            config = {}
        for key in ("model_type", "architectures", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "vocab_size", "torch_dtype", "dtype"):
            if key in config:
                summary[key] = config[key]
    weights = {p: s for p, s in files.items() if p.endswith((".safetensors", ".bin", ".pt", ".gguf"))}
    summary["weight_files"] = len(weights)
    summary["weight_bytes"] = sum(weights.values())
    summary["pickle_files"] = sorted(p for p in weights if p.endswith((".bin", ".pt")))
    return summary


def read_limited(src: Path, limit: int) -> str | None:
    if src.stat().st_size > limit:
        return None
    return src.read_text(encoding="utf-8", errors="replace")
