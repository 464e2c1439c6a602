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


@dataclass
class ValidationReport:
    losses: dict[str, float | None]  # label -> mean token loss (None: not a causal LM)
    perplexities: dict[str, float | None]
    samples: list[dict] = field(default_factory=list)  # [{"prompt", "output"}] of the result
    gates: list[dict] = field(default_factory=list)  # [{"metric", "value", "max"/"min", "ok"}]
    texts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(g["ok"] for g in self.gates)

    def to_json(self) -> dict:
        return {"losses": self.losses, "perplexities": self.perplexities, "samples": self.samples,
                "gates": self.gates, "texts": self.texts, "notes": self.notes, "ok": self.ok}


def default_texts(limit: int) -> list[str]:
    texts = []
    for name in DEFAULT_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        for para in doc.split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 80:
                texts.append(para[:1000])
    return texts[:limit]


def _loss(model, tokenizer, texts: list[str], max_tokens: int) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total += float(out.loss) * n
            count += n
    return total / count if count else float("nan")


def validate(result: Path, parents: dict[str, Path], *, texts: list[str] | None = None,
             max_samples: int = 32, prompts: list[str] = (), gates: list[dict] = (),
             max_tokens: int = 256, max_new_tokens: int = 24) -> ValidationReport:
    """Loss of the result and of each parent on the same texts; generations from the result;
    each gate `{metric: "loss_ratio_to_best_parent", max: 1.2}` checked."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    texts = list(texts or default_texts(max_samples))[:max_samples]
    report = ValidationReport(losses={}, perplexities={}, texts=len(texts))
    config = AutoConfig.from_pretrained(result)
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))
    try:
        tokenizer = AutoTokenizer.from_pretrained(result)
    except (OSError, ValueError) as exc:
        tokenizer = None
        report.notes.append(f"no tokenizer to evaluate with: {exc}")
    if not causal or tokenizer is None:
        report.notes.append("loss and samples are measured for causal language models only")
        for label in ["result", *parents]:
            report.losses[label] = report.perplexities[label] = None
    else:
        torch.manual_seed(0)
        for label, path in [("result", result), *parents.items()]:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            loss = _loss(model, tokenizer, texts, max_tokens)
            report.losses[label] = loss
            report.perplexities[label] = math.exp(min(loss, 50)) if loss == loss else None
            if label == "result":
                for prompt in prompts:
                    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
                    with torch.no_grad():
                        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
                    report.samples.append({"prompt": prompt, "output": tokenizer.decode(
                        out[0, ids.shape[1]:], skip_special_tokens=True)})
            del model
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
        return {**gate, "value": None, "ok": False, "why": "the metric could not be measured"}
    ok = ((gate.get("max") is None or value <= gate["max"])
          and (gate.get("min") is None or value >= gate["min"]))
    return {**gate, "value": value, "ok": ok}
