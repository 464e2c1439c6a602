"""Validation of an assembled model against its parents: loss and perplexity on the same
texts, a few sample generations, and the recipe's gates.

The default texts are real prose that needs no download: docstrings of Python's standard
library. transformers and torch are imported only here, in the heavy worker.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODULES = ("json", "collections", "pathlib", "functools", "itertools", "argparse", "logging",
                   "subprocess", "textwrap", "datetime", "decimal", "fractions", "statistics", "heapq")
# The files AutoTokenizer loads a tokenizer from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


@dataclass
class ValidationReport:
    losses: dict[str, float | None]  # label -> mean token loss (None: not a causal LM)
    perplexities: dict[str, float | None]
    samples: list[dict] = field(default_factory=list)  # [{"prompt", "output"}] of the result
    gates: list[dict] = field(default_factory=list)  # [{"metric", "value", "max"/"min", "ok"}]
    texts: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # label -> why it was not evaluated
    dtypes: dict[str, str] = field(default_factory=dict)  # label -> the dtype it was evaluated in
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return all(g["ok"] for g in self.gates)

    def to_json(self) -> dict:
        return {"losses": self.losses, "perplexities": self.perplexities, "samples": self.samples,
                "gates": self.gates, "texts": self.texts, "notes": self.notes, "ok": self.ok,
                "skipped": self.skipped, "dtypes": self.dtypes, "device": self.device}


def default_texts(limit: int) -> list[str]:
    texts = []
    for name in DEFAULT_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        for para in doc.split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 80:
                texts.append(para[:1000])
    return texts[:limit]


def _loss(model, tokenizer, texts: list[str], max_tokens: int, *, on_text=None) -> float:
    """Mean token loss of `model` over `texts` (each cut at `max_tokens`); `on_text(i, n)`
    is called before each text."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i, text in enumerate(texts):
            if on_text is not None:
                on_text(i, len(texts))
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
            ids = ids.to(model.device)
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total += float(out.loss) * n
            count += n
    return total / count if count else float("nan")


def evaluation_need(weights: int, config: dict | None, *, max_tokens: int = 256) -> int:
    """Bytes that evaluating a model of `weights` bytes (in its stored dtype) needs: those,
    the float32 logits of one text twice (the logits and the loss's log-softmax), a few
    hidden-state copies, and a margin for the runtime."""
    config = config or {}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    vocab = int(text.get("vocab_size") or 32_000)
    hidden = int(text.get("hidden_size") or text.get("d_model") or 1024)
    return int(weights + 2 * vocab * max_tokens * 4 + 8 * hidden * max_tokens * 4 + 64 * 2**20)


def model_memory(path: Path, *, max_tokens: int = 256) -> int:
    """`evaluation_need` of a model folder, from its headers."""
    from apps.registry.engine.model import read_model

    files = read_model(Path(path))
    return evaluation_need(sum(t.nbytes for t in files.tensors.values()), files.config, max_tokens=max_tokens)


def validation_memory(result_weights: int, result_config: dict | None, parents: dict[str, Path], *,
                      max_tokens: int = 256) -> dict:
    """The peak memory of validating a result against its parents, one model at a time:
    `{"peak": bytes, "models": {label: bytes}}`."""
    models = {"result": evaluation_need(result_weights, result_config, max_tokens=max_tokens)}
    models.update({label: model_memory(path, max_tokens=max_tokens) for label, path in parents.items()})
    return {"peak": max(models.values()), "models": models}


def available_memory(device: str) -> int:
    """Bytes free for one more model on `device` now."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def validate(result: Path, parents: dict[str, Path], *, texts: list[str] | None = None,
             max_samples: int = 32, prompts: list[str] = (), gates: list[dict] = (),
             max_tokens: int = 256, max_new_tokens: int = 24, device: str | None = None,
             memory_budget: int | None = None) -> ValidationReport:
    """Loss of the result and of each parent on the same texts; generations from the result;
    each gate `{metric: "loss_ratio_to_best_parent", max: 1.2}` checked.

    One model at a time, in its stored dtype (a bf16 model is evaluated in bf16, never as a
    float32 copy), on CUDA when present, freed before the next is loaded. A model whose need
    (`model_memory`) is above the memory available (`memory_budget`, else what is free on the
    device when its turn comes) is not loaded: the report says so in `skipped`, with the
    numbers, and a gate that needed its loss fails with that reason.

    The parents come from the worker's model cache (`apps.monitoring.engine.modelcache`):
    validating another merge of the same parents does not load them again. The result, a
    folder of this run only, is loaded outside it. The cache gives room back first when a
    model would not otherwise fit."""
    import gc

    import torch

    from apps.monitoring.engine.modelcache import cache_key, load_causal_lm, model_cache
    from apps.registry.engine.model import read_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = list(texts or default_texts(max_samples))[:max_samples]
    report = ValidationReport(losses={}, perplexities={}, texts=len(texts))
    # Decided from the folder's files (config.json, the tokenizer's files) before transformers
    # is imported: a result with nothing to measure costs no import of it.
    files = read_model(Path(result))
    architectures = (files.config or {}).get("architectures") or []
    causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    tokenizer = None
    if not causal:
        pass
    elif not any((Path(result) / name).is_file() for name in TOKENIZER_FILES):
        report.notes.append("no tokenizer to evaluate with: the result has none of "
                            + ", ".join(TOKENIZER_FILES))
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(result)
        except (OSError, ValueError) as exc:
            report.notes.append(f"no tokenizer to evaluate with: {exc}")
    if not causal or tokenizer is None:
        report.notes.append("loss and samples are measured for causal language models only")
        for label in ["result", *parents]:
            report.losses[label] = report.perplexities[label] = None
    else:
        torch.manual_seed(0)
        for label, path in [("result", result), *parents.items()]:
            cache = model_cache()
            cached = label != "result" and cache_key("causal_lm", path, "auto", device) in cache
            need = model_memory(path, max_tokens=max_tokens)
            free = memory_budget if memory_budget is not None else available_memory(device)
            if need > free and not cached and memory_budget is None and cache.release(need - free):
                free = available_memory(device)  # the cache gave back what it held
            if need > free and not cached:
                report.losses[label] = report.perplexities[label] = None
                report.skipped[label] = (f"needs {need / 2**30:.2f} GiB to evaluate, "
                                         f"{free / 2**30:.2f} GiB available on {device}")
                continue
            model, _ = load_causal_lm(path, dtype="auto", device=device, use_cache=label != "result",
                                      label=label)
            loss = _loss(model, tokenizer, texts, max_tokens)
            report.losses[label] = loss
            report.perplexities[label] = math.exp(min(loss, 50)) if loss == loss else None
            if label == "result":
                for prompt in prompts:
                    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
                    with torch.no_grad():
                        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
                    report.samples.append({"prompt": prompt, "output": tokenizer.decode(
                        out[0, ids.shape[1]:], skip_special_tokens=True)})
            report.dtypes[label] = str(next(model.parameters()).dtype).removeprefix("torch.")
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    report.device = device
    for gate in gates:
        report.gates.append(_gate(gate, report))
    return report


def _gate(gate: dict, report: ValidationReport) -> dict:
    metric = gate.get("metric")
    parent_losses = [v for k, v in report.losses.items() if k != "result" and v is not None]
    result = report.losses.get("result")
    if metric == "loss_ratio_to_best_parent":
        value = result / min(parent_losses) if result is not None and parent_losses else None
    elif metric == "loss":
        value = result
    else:
        return {**gate, "value": None, "ok": False, "why": f"unknown metric {metric!r}"}
    if value is None:
        why = "; ".join(f"{k}: {v}" for k, v in report.skipped.items()) or "the metric could not be measured"
        return {**gate, "value": None, "ok": False, "why": f"not measured ({why})" if report.skipped else why}
    ok = ((gate.get("max") is None or value <= gate["max"])
          and (gate.get("min") is None or value >= gate["min"]))
    return {**gate, "value": value, "ok": ok}
