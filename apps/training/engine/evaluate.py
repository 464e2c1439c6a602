"""Loss and perplexity of one causal language model on a set of texts: `audobon evaluate`.

The same measure as assembly's validation (`apps.assembly.engine.validation`: mean token loss
over texts cut at `max_tokens`, perplexity its exponential), on the texts of a library
dataset or on the built-in validation texts (standard library docstrings, no download).
The model and its tokenizer come from the worker's model cache, so evaluating the same model
again in a running heavy worker does not load it again. Nothing is registered: the numbers are
the job's result.

No Django: it takes a folder and texts.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter

DEFAULT_TEXTS = 32
DATASET_FILES = ("validation.jsonl", "train.jsonl")


class EvaluateError(ValueError):
    """An evaluation that cannot run; the message says why."""


def _row_text(row, tokenizer=None) -> str | None:
    """The text of one canonical dataset row: `text`, or a `messages` conversation rendered
    with the tokenizer's chat template (plain "role: content" lines without one)."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("text"), str):
        return row["text"]
    turns = row.get("messages")
    if isinstance(turns, list) and turns:
        turns = [t for t in turns if isinstance(t, dict) and isinstance(t.get("content"), str)]
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            with contextlib.suppress(Exception):  # a template that rejects these turns: plain lines
                return tokenizer.apply_chat_template(turns, tokenize=False)
        return "\n".join(f"{t.get('role', 'user')}: {t['content']}" for t in turns)
    values = [v for v in row.values() if isinstance(v, str)]
    return "\n".join(values) or None


def dataset_texts(folder: Path, limit: int, tokenizer=None) -> list[str]:
    """Up to `limit` texts of a dataset folder: its validation rows first, then its training
    rows (a library dataset's `validation.jsonl`, `train.jsonl`), else any `.jsonl`, `.txt`
    or `.md` file in it (a line each)."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else [folder / n for n in DATASET_FILES if (folder / n).is_file()]
    if not files and folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".txt", ".md")
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    texts: list[str] = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if len(texts) >= limit:
                    return texts
                line = line.strip()
                if not line:
                    continue
                if path.suffix == ".jsonl":
                    try:
                        line = _row_text(json.loads(line), tokenizer)
                    except ValueError:
                        continue
                if line and line.strip():
                    texts.append(line)
    if not texts:
        raise EvaluateError(f"dataset {folder}: no text to evaluate on (validation.jsonl, train.jsonl, "
                            ".jsonl, .txt or .md)")
    return texts


def evaluate(model_dir: Path, *, dataset_dir: Path | None = None, texts: int = DEFAULT_TEXTS,
             max_tokens: int = 256, device: str | None = None,
             reporter: Reporter | None = None, label: str | None = None) -> dict:
    """{"loss", "perplexity", "texts", "device", "dtype", "cached", "load_seconds",
    "eval_seconds", "source"}: the mean token loss of the model in `model_dir` (stored dtype)
    on `texts` texts of `dataset_dir` (default: the built-in validation texts)."""
    import torch
    import transformers

    from apps.assembly.engine.validation import _loss, default_texts
    from apps.monitoring.engine.modelcache import load_causal_lm, load_tokenizer

    reporter = reporter or NullReporter()
    transformers.utils.logging.disable_progress_bar()
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise EvaluateError(f"{model_dir}: no config.json; a model folder is needed")
    try:
        archs = json.loads(config_path.read_text()).get("architectures") or []
    except ValueError as exc:
        raise EvaluateError(f"{config_path}: not valid JSON ({exc})") from None
    if not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise EvaluateError(f"{model_dir.name}: a {', '.join(archs) or 'model of unknown architecture'} "
                            "is not a causal language model; loss and perplexity need one")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluateError(f"device {device!r}: no CUDA device is visible here")
    start = time.perf_counter()
    try:
        tokenizer, _ = load_tokenizer(model_dir, label=label)
    except (OSError, ValueError) as exc:
        raise EvaluateError(f"{model_dir.name}: no tokenizer to evaluate with: {exc}") from None
    model, cached = load_causal_lm(model_dir, dtype="auto", device=device, label=label)
    load_seconds = time.perf_counter() - start
    reporter.log(f"{label or model_dir.name} {'was already loaded (model cache)' if cached else 'loaded'} "
                 f"in {load_seconds:.2f} s on {device}")
    if dataset_dir is not None:
        items, source = dataset_texts(dataset_dir, texts, tokenizer), str(dataset_dir)
    else:
        items, source = default_texts(texts), "built-in validation texts (standard library docstrings)"

    def on_text(i: int, n: int) -> None:
        reporter.step(i, n)
        if reporter.cancelled():
            raise JobCancelled(f"stopped after {i} of {n} texts")

    start = time.perf_counter()
    loss = _loss(model, tokenizer, items, max_tokens, on_text=on_text)
    eval_seconds = time.perf_counter() - start
    reporter.step(len(items), len(items))
    measured = loss == loss  # NaN: every text was shorter than two tokens
    return {"loss": loss if measured else None,
            "perplexity": math.exp(min(loss, 50)) if measured else None,
            "texts": len(items), "max_tokens": max_tokens, "device": device,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "cached": cached, "load_seconds": round(load_seconds, 3),
            "eval_seconds": round(eval_seconds, 3), "source": source}
