"""Datasets for the training tests, written straight in the library's dataset layout
(train.jsonl, validation.jsonl, dataset.json) so the engine is tested on its own."""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path

TOPICS = ("json", "textwrap", "pathlib", "functools", "collections", "string", "csv", "argparse")


def stdlib_pairs(n: int, *, seed: int = 0, vary: bool = True) -> list[tuple[str, str]]:
    """(question, answer) pairs from the standard library's docstrings: real text, no download.
    With `vary`, answers range from a few words to a few sentences."""
    import importlib

    rng = random.Random(seed)
    docs = []
    for name in TOPICS:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr)) or ""
            first = " ".join(doc.split())
            if len(first) > 40:
                docs.append((f"{name}.{attr}", first))
    pairs = []
    for i in range(n):
        name, doc = docs[(i * 7 + seed) % len(docs)]
        words = doc.split()
        size = rng.choice((3, 6, 12, 24, 40)) if vary else 16
        pairs.append((f"What does {name} do?", " ".join(words[:size])))
    return pairs


def write_dataset(folder: Path, train: list[dict], validation: list[dict], *, task: str,
                  labels: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation)):
        with (folder / f"{split}.jsonl").open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    card = {"schema": "audobon.dataset/1", "task": task, "format": task, "mapping": {},
            "rows": {"train": len(train), "validation": len(validation)}, "seed": 0,
            "validation_fraction": 0.1, "source": {"name": "builders", "sha256": "", "bytes": 0}}
    if labels is not None:
        card["labels"] = labels
    (folder / "dataset.json").write_text(json.dumps(card))
    return folder


def chat_rows(n: int, *, seed: int = 0, vary: bool = True) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in stdlib_pairs(n, seed=seed, vary=vary)]


def write_chat_dataset(folder: Path, n_train: int = 48, n_val: int = 8, *, seed: int = 0,
                       vary: bool = True) -> Path:
    rows = chat_rows(n_train + n_val, seed=seed, vary=vary)
    return write_dataset(folder, rows[:n_train], rows[n_train:], task="chat")


def write_classification_dataset(folder: Path, n_train: int = 40, n_val: int = 8) -> Path:
    """Sentences labelled by whether they are about files or about text: learnable."""
    files = ["the file was opened for reading", "write the path to disk", "the folder holds files",
             "close the file handle", "a path names a file on disk", "read bytes from the file"]
    text = ["split the sentence into words", "wrap the paragraph of text", "the string has letters",
            "join words with spaces", "indent every line of text", "count the words in a sentence"]
    rows = []
    for i in range(n_train + n_val):
        pool, label = (files, "files") if i % 2 else (text, "text")
        rows.append({"text": pool[(i // 2) % len(pool)], "label": label})
    return write_dataset(folder, rows[:n_train], rows[n_train:], task="classification",
                         labels=["files", "text"])
