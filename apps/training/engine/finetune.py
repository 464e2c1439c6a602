"""Fine-tuning on transformers' Trainer with peft: LoRA, QLoRA (CUDA + bitsandbytes) or full,
for causal LM SFT (loss on completions only) or sequence classification.

No Django here: it takes a spec and folders (base model, dataset, run folder, output
folder) and reports through the Reporter protocol, so the same code runs in a heavy worker,
from the command line, and in a container. Checkpoints are the Trainer's own (weights,
optimizer, scheduler, RNG states, data position), so a stopped or crashed run resumes
exactly from its last one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.assets.engine.safeparse import json_loads
from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter
from apps.training.engine.spec import FinetuneSpec

CHECKPOINTS = "checkpoints"
BEFORE_FILE = "before.json"  # evaluation and samples of the base, kept for a resume
FALLBACK_TEMPLATE = "### {role}\n{content}\n"  # for tokenizers without a chat template


class FinetuneError(ValueError):
    """A run that cannot start or go on; the message says what to change."""


@dataclass
class FinetuneResult:
    output: Path  # the adapter folder (lora, qlora) or the model folder (full)
    kind: str  # "adapter" or "model"
    merged: Path | None
    metrics: dict
    before: dict
    after: dict
    samples: list[dict]
    checkpoints: list[str]
    stopped: str = ""  # why training ended before max_steps: "time budget", "early stopping"
    notes: list[str] = field(default_factory=list)


# --- small pieces ------------------------------------------------------------------------------

def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.split("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise FinetuneError(f"device {requested!r}: no CUDA device is visible here")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def lora_targets_from_catalogue(model_dir: Path) -> list[str]:
    """The attention and MLP linear layers of the model's blocks, read from headers only
    through the registry's component catalogue."""
    from apps.registry.engine.components import catalogue, walk
    from apps.registry.engine.model import read_model

    files = read_model(model_dir)
    found: list[str] = []
    for comp in walk(catalogue(files)):
        if comp.kind not in ("attention", "mlp"):
            continue
        for name in comp.tensors:
            info = files.tensors[name]
            if name.endswith(".weight") and len(info.shape) == 2 and name.startswith(comp.prefix):
                module = name[len(comp.prefix):-len(".weight")]
                if module not in found:
                    found.append(module)
    return found


# --- data --------------------------------------------------------------------------------------

def _render_chat(tokenizer, messages: list[dict], *, generation_prompt: bool) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    text = "".join(FALLBACK_TEMPLATE.format(role=m["role"], content=m["content"]) for m in messages)
    return text + (FALLBACK_TEMPLATE.split("{content}")[0].format(role="assistant")
                   if generation_prompt else "")


def chat_example(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """input_ids and labels of one conversation: the loss falls on the last assistant turn
    only (the prompt's labels are -100)."""
    if messages and messages[-1]["role"] == "assistant":
        prompt = _render_chat(tokenizer, messages[:-1], generation_prompt=True)
        full = _render_chat(tokenizer, messages, generation_prompt=False)
        completion = full[len(prompt):] if full.startswith(prompt) else None
        if completion is None:  # a template that rewrites earlier turns: train on it all
            prompt, completion = "", full
    else:
        prompt, completion = "", _render_chat(tokenizer, messages, generation_prompt=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not c_ids or c_ids[-1] != tokenizer.eos_token_id) \
            and not tokenizer.chat_template:
        c_ids = [*c_ids, tokenizer.eos_token_id]
    return p_ids + c_ids, [-100] * len(p_ids) + list(c_ids)


def text_example(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = [*ids, tokenizer.eos_token_id]
    return ids


def read_card(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / "dataset.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"{path}: not a dataset card ({exc}); import the data with "
                            "`audobon import_dataset`") from None
    if not isinstance(card, dict) or card.get("task") not in ("chat", "text", "classification"):
        raise FinetuneError(f"{path}: unknown dataset task {card.get('task')!r}")
    return card


def tokenized_splits(spec: FinetuneSpec, tokenizer, dataset_dir: Path, cache_dir: Path,
                     max_length: int, card: dict, label2id: dict[str, int] | None):
    """The train and validation splits as token ids, memory-mapped by `datasets`. A row
    longer than max_length stops the run before it starts, named by split and line."""
    import hashlib

    import datasets

    paths = {s: Path(dataset_dir) / f"{s}.jsonl" for s in ("train", "validation")}
    files = {s: str(p) for s, p in paths.items() if p.is_file() and p.stat().st_size}
    if "train" not in files:
        raise FinetuneError(f"{dataset_dir}: the dataset has no training rows")
    raw = datasets.load_dataset("json", data_files=files, cache_dir=str(cache_dir))
    task = card["task"]

    def encode(row):
        if task == "classification":
            ids = tokenizer(row["text"], truncation=False)["input_ids"]
            return {"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": label2id[str(row["label"])], "length": len(ids)}
        if task == "chat":
            ids, labels = chat_example(tokenizer, row["messages"])
        else:
            ids = text_example(tokenizer, row["text"])
            labels = list(ids)
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "length": len(ids)}

    out = {}
    for split, ds in raw.items():
        if split == "validation":
            ds = ds.select(range(min(len(ds), spec.eval_max_rows)))
        key = hashlib.sha256(json.dumps([ds._fingerprint, str(tokenizer.name_or_path), max_length, task,
                                         sorted((label2id or {}).items())]).encode()).hexdigest()[:16]
        enc = ds.map(encode, remove_columns=ds.column_names, new_fingerprint=key)
        lengths = enc["length"]
        too_long = [(i + 1, n) for i, n in enumerate(lengths) if n > max_length]
        if too_long:
            shown = "; ".join(f"{split} line {line}: {n} tokens" for line, n in too_long[:10])
            more = f" (and {len(too_long) - 10} more)" if len(too_long) > 10 else ""
            raise FinetuneError(f"{len(too_long)} row(s) are longer than max_length {max_length}: "
                                f"{shown}{more}; shorten them or raise max_length")
        # The training split keeps its lengths: the length-grouped sampler reads them instead
        # of measuring every row (CountingCollator drops them before the model sees a batch).
        out[split] = enc if split == "train" else enc.remove_columns(["length"])
    return out


class CountingCollator:
    """Wraps a collator and counts the real (non-padding) tokens it hands to the model,
    the figure tokens/s is made of, packed or padded alike."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = 0
        self.computed = 0  # positions the model computes, padding included

    def __call__(self, features):
        features = [{k: v for k, v in f.items() if k != "length"} for f in features]
        self.tokens += sum(len(f["input_ids"]) for f in features)
        batch = self.inner(features)
        self.computed += batch["input_ids"].numel()
        return batch


def trainer_class():
    """The Trainer, evaluating a causal LM on padding-free batches whatever the training
    batches are: the same loss (each batch's token mean) without computing padding; and
    grouping rows by length from a generator seeded by (seed, epoch), so a resumed run
    draws the same batches as one never stopped (the stock sampler draws from the global
    random state, which a resume does not restore before the epoch starts)."""
    import torch
    import transformers
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class _SeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size, *, lengths, seed):
            super().__init__(batch_size, lengths=list(lengths))
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    class _Trainer(transformers.Trainer):
        eval_collator = None

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                return _SeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths,
                                                   seed=self.args.data_seed or self.args.seed)
            return sampler

        def get_eval_dataloader(self, eval_dataset=None):
            if self.eval_collator is None:
                return super().get_eval_dataloader(eval_dataset)
            training_collator, self.data_collator = self.data_collator, self.eval_collator
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = training_collator

    return _Trainer


# --- progress ----------------------------------------------------------------------------------

def reporter_callback(reporter: Reporter, counter: CountingCollator, max_minutes: float | None):
    """A TrainerCallback that turns the Trainer's logs into Reporter events and its
    checks into a cooperative stop: a cancel or the time budget saves a checkpoint at the
    current step, then stops."""
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def __init__(self):
            self.started = time.monotonic()
            self.first_tokens = 0
            self.cancelled = False
            self.out_of_time = False
            self.tokens_per_s = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.started = time.monotonic()
            self.first_tokens = counter.tokens

        def on_step_end(self, args, state, control, **kw):
            if reporter.cancelled():
                self.cancelled = True
            elif max_minutes and time.monotonic() - self.started > max_minutes * 60:
                self.out_of_time = True
            if self.cancelled or self.out_of_time:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            values: dict[str, float] = {}
            if "loss" in logs:
                # Since the start of this job's training: the data loader collates ahead of
                # the step, so a per-step figure would jump between zero and double.
                elapsed = time.monotonic() - self.started
                if elapsed > 0:
                    self.tokens_per_s = (counter.tokens - self.first_tokens) / elapsed
                values = {"train_loss": logs["loss"], "learning_rate": logs.get("learning_rate", 0.0),
                          "tokens_per_s": round(self.tokens_per_s, 1)}
                if logs.get("grad_norm") is not None:
                    values["grad_norm"] = logs["grad_norm"]
            for key in ("eval_loss", "eval_accuracy"):
                if key in logs:
                    values[key] = logs[key]
            values = {k: float(v) for k, v in values.items() if isinstance(v, int | float)
                      and math.isfinite(float(v))}
            reporter.step(state.global_step, state.max_steps, **values)

    return _Callback()


# --- the run -----------------------------------------------------------------------------------

def _precision(spec: FinetuneSpec, device: str) -> tuple[bool, bool]:
    """(bf16, fp16) for the Trainer."""
    import torch

    wanted = spec.mixed_precision
    if wanted == "auto":
        if not device.startswith("cuda"):
            return False, False
        return (True, False) if torch.cuda.is_bf16_supported() else (False, True)
    if wanted == "fp16" and not device.startswith("cuda"):
        raise FinetuneError("mixed_precision fp16 needs a CUDA device; use bf16 or no on a CPU")
    return wanted == "bf16", wanted == "fp16"


def _load_model(spec: FinetuneSpec, base_dir: Path, device: str, card: dict, notes: list[str],
                reporter: Reporter, label2id: dict[str, int] | None):
    import torch
    import transformers

    kwargs: dict[str, Any] = {}
    if spec.method == "qlora":
        if not device.startswith("cuda"):
            raise FinetuneError("method qlora needs a CUDA GPU (4-bit weights through bitsandbytes); "
                                "use method: lora on this machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise FinetuneError("method qlora needs the bitsandbytes package: pip install bitsandbytes"
                                ) from None
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device}
    elif spec.method == "lora" and device.startswith("cuda"):
        # Frozen base weights in half precision; the adapter trains in fp32 under autocast.
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        kwargs["dtype"] = torch.float32
    if spec.task == "classification":
        labels = list(label2id)
        model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id,
            output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        fresh = [k for k in info.get("missing_keys", []) if "classifier" in k or "score" in k]
        if fresh or info.get("mismatched_keys"):
            note = (f"the base model has no classification head for these {len(labels)} labels: "
                    f"a new head is created and trained")
            notes.append(note)
            reporter.log(note)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    return model


def _apply_lora(spec: FinetuneSpec, model, base_dir: Path):
    import peft

    targets = spec.lora.target_modules or lora_targets_from_catalogue(base_dir)
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing or not targets:
        available = ", ".join(lora_targets_from_catalogue(base_dir)) or "none found"
        raise FinetuneError(f"lora.target_modules: the base model has no module "
                            f"{', '.join(missing) or '(none given)'}; its attention and MLP layers are: "
                            f"{available}")
    if spec.method == "qlora":
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.gradient_checkpointing)
    config = peft.LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=targets,
        task_type=peft.TaskType.SEQ_CLS if spec.task == "classification" else peft.TaskType.CAUSAL_LM)
    return peft.get_peft_model(model, config), targets


def storable(text: str) -> str:
    """Text that any database's JSON takes: PostgreSQL refuses NUL characters, which an
    untrained model or a raw dataset row can hold."""
    return text.replace("\x00", "")


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, device: str) -> list[str]:
    import torch

    outs = []
    model.eval()
    for prompt in prompts:
        text = _render_chat(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        outs.append(storable(text))
    return outs


def _sample_prompts(spec: FinetuneSpec, dataset_dir: Path, card: dict) -> list[str]:
    if spec.samples is not None:
        return list(spec.samples)
    prompts = []
    path = Path(dataset_dir) / "validation.jsonl"
    if not path.is_file() or card["task"] == "classification":
        return prompts
    with path.open() as fh:
        for line in fh:
            row = json_loads(line, max_bytes=None)
            if card["task"] == "chat":
                users = [m["content"] for m in row["messages"] if m["role"] == "user"]
                if users:
                    prompts.append(users[-1])
            else:
                prompts.append(row["text"][:80])
            if len(prompts) == 2:
                break
    return prompts


def _evaluate(trainer, task: str) -> dict:
    metrics = trainer.evaluate()
    out = {"loss": round(float(metrics["eval_loss"]), 6)}
    if task == "classification":
        out["accuracy"] = round(float(metrics.get("eval_accuracy", 0.0)), 6)
    else:
        out["perplexity"] = round(math.exp(min(out["loss"], 50)), 4)
    return out


def _last_evaluation(trainer, task: str) -> dict:
    """The evaluation the Trainer made at the last step, when it made one there and the
    weights are still those it evaluated (no best checkpoint reloaded): no second pass."""
    if trainer.args.load_best_model_at_end:
        return {}
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") != trainer.state.global_step:
                return {}
            out = {"loss": round(float(entry["eval_loss"]), 6)}
            if task == "classification":
                out["accuracy"] = round(float(entry.get("eval_accuracy", 0.0)), 6)
            else:
                out["perplexity"] = round(math.exp(min(out["loss"], 50)), 4)
            return out
    return {}


def _accuracy(pred) -> dict:
    import numpy as np

    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == pred.label_ids).mean())}


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def run_finetune(spec: FinetuneSpec, *, base_dir: Path, dataset_dir: Path, run_dir: Path, out_dir: Path,
                 reporter: Reporter | None = None, resume: bool = False,
                 base_ref: str = "") -> FinetuneResult:
    """Train, evaluate before and after, generate samples, and write the adapter (or model)
    into `out_dir`. Checkpoints go under `run_dir/checkpoints`; with `resume`, training
    continues exactly from the last one there."""
    import datasets
    import torch
    import transformers

    reporter = reporter or NullReporter()
    # The reporter is the progress display; the libraries' own bars would only fill logs.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.device)
    bf16, fp16 = _precision(spec, device)
    card = read_card(dataset_dir)
    if spec.task == "classification" and card["task"] != "classification":
        raise FinetuneError(f"task classification needs a classification dataset (text + label); "
                            f"{spec.dataset} holds {card['task']} rows")
    if spec.task == "causal_lm" and card["task"] == "classification":
        raise FinetuneError(f"{spec.dataset} is a classification dataset: use task: classification")
    label2id = {str(label): i for i, label in enumerate(card.get("labels") or [])} or None
    if spec.task == "classification" and not label2id:
        raise FinetuneError(f"{spec.dataset}: the dataset card lists no labels")
    if spec.merge and spec.method == "qlora":
        raise FinetuneError("merge: a QLoRA adapter is trained against 4-bit weights; merge it with an "
                            "assembly recipe (base+adapter) instead")

    transformers.set_seed(spec.seed)  # before the model: a new head and LoRA's A start seeded
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = json.loads((Path(base_dir) / "config.json").read_text())
    model_max = config.get("max_position_embeddings") or config.get("n_positions") or 2048
    max_length = spec.max_length or min(int(model_max), 2048)
    if max_length > model_max:
        raise FinetuneError(f"max_length {max_length} is above the model's maximum of {model_max} tokens")

    reporter.log(f"tokenizing {spec.dataset} (max {max_length} tokens a row)")
    splits = tokenized_splits(spec, tokenizer, dataset_dir, run_dir / "cache", max_length, card, label2id)
    notes: list[str] = []
    reporter.log(f"loading {base_ref or base_dir} for {spec.method} on {device}")
    model = _load_model(spec, base_dir, device, card, notes, reporter, label2id)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    targets: list[str] = []
    if spec.method in ("lora", "qlora"):
        model, targets = _apply_lora(spec, model, base_dir)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    reporter.log(f"{trainable:,} of {total:,} parameters train"
                 + (f" (LoRA r={spec.lora.r} on {', '.join(targets)})" if targets else ""))

    if spec.task == "classification":
        inner = transformers.DataCollatorWithPadding(tokenizer)
    elif spec.packing:
        inner = transformers.DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        inner = transformers.DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    collator = CountingCollator(inner)
    has_eval = "validation" in splits and len(splits["validation"]) > 0
    batch = 8 if spec.batch_size == "auto" else spec.batch_size
    args = transformers.TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS), max_steps=spec.max_steps,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        auto_find_batch_size=spec.batch_size == "auto",
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate, lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_steps, weight_decay=spec.weight_decay,
        logging_steps=spec.logging_steps, eval_strategy="steps" if has_eval else "no",
        eval_steps=spec.eval_steps, save_strategy="steps", save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit, seed=spec.seed, data_seed=spec.seed,
        bf16=bf16, fp16=fp16, use_cpu=device == "cpu",
        gradient_checkpointing=spec.gradient_checkpointing,
        load_best_model_at_end=bool(spec.early_stopping_patience and has_eval),
        metric_for_best_model="eval_loss" if spec.early_stopping_patience else None,
        greater_is_better=False if spec.early_stopping_patience else None,
        # Padded batches of rows of similar length: the same rows, far less padding computed.
        train_sampling_strategy="group_by_length" if spec.group_by_length and not spec.packing else "random",
        remove_unused_columns=False, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, save_only_model=False,
        # Evaluating a causal LM needs its loss only: without this the Trainer keeps every
        # batch's logits (rows x tokens x vocabulary floats) and concatenates them.
        prediction_loss_only=spec.task == "causal_lm",
    )
    callback = reporter_callback(reporter, collator, spec.max_minutes)
    callbacks: list = [callback]
    if spec.early_stopping_patience and has_eval:
        callbacks.append(transformers.EarlyStoppingCallback(spec.early_stopping_patience))
    if device.startswith("cuda") and spec.method != "qlora":
        model.to(device)
    trainer = trainer_class()(
        model=model, args=args, train_dataset=splits["train"],
        eval_dataset=splits["validation"] if has_eval else None, data_collator=collator,
        processing_class=tokenizer, callbacks=callbacks,
        compute_metrics=_accuracy if spec.task == "classification" else None)
    trainer.remove_callback(transformers.PrinterCallback)
    if spec.task == "causal_lm":
        trainer.eval_collator = transformers.DataCollatorWithFlattening(return_position_ids=True,
                                                                        separator_id=-100)
    else:
        trainer.eval_collator = inner  # evaluation's rows are not counted as trained tokens

    prompts = _sample_prompts(spec, dataset_dir, card) if spec.task == "causal_lm" else []
    before_path = run_dir / BEFORE_FILE
    last = checkpoints(run_dir)[-1] if resume and checkpoints(run_dir) else None
    if last is not None and before_path.is_file():
        before_all = json.loads(before_path.read_text())
    else:
        reporter.log("evaluating the base model on the validation split")
        before_all = {"eval": _evaluate(trainer, spec.task) if has_eval else {},
                      "samples": generate(trainer.model, tokenizer, prompts, spec.sample_max_new_tokens,
                                           device) if prompts else []}
        _write_json(before_path, before_all)
    if last is not None:
        reporter.log(f"resuming from {last.name}")
    started = time.monotonic()
    tokens_at_start, computed_at_start = collator.tokens, collator.computed
    try:
        output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    except Exception as exc:
        if _is_oom(exc):
            kept = checkpoints(run_dir)
            raise FinetuneError(
                f"out of memory at batch size {batch}: try batch_size {max(1, batch // 2)} (or 'auto'), "
                f"gradient_checkpointing: true, or a shorter max_length"
                + (f"; the last checkpoint ({kept[-1].name}) is kept for --resume" if kept else "")) from None
        raise
    seconds = time.monotonic() - started
    if callback.cancelled:
        kept = checkpoints(run_dir)
        reporter.log(f"stopped at step {trainer.state.global_step}; checkpoint {kept[-1].name} kept"
                     if kept else "stopped")
        raise JobCancelled(f"stopped at step {trainer.state.global_step}")
    stopped = ("time budget" if callback.out_of_time else
               "early stopping" if trainer.state.global_step < spec.max_steps else "")

    after = _last_evaluation(trainer, spec.task) if has_eval else {}
    if has_eval and not after:
        reporter.log("evaluating the tuned model on the validation split")
        after = _evaluate(trainer, spec.task)
    tuned_samples = generate(trainer.model, tokenizer, prompts, spec.sample_max_new_tokens, device) \
        if prompts else []
    samples = [{"prompt": storable(p), "base": b, "tuned": t}
               for p, b, t in zip(prompts, before_all["samples"], tuned_samples, strict=False)]
    tokens = collator.tokens - tokens_at_start
    computed = collator.computed - computed_at_start
    metrics = {
        "train_loss": round(float(output.training_loss), 6),
        "eval_loss": after.get("loss"), "eval_loss_before": before_all["eval"].get("loss"),
        "steps": trainer.state.global_step, "seconds": round(seconds, 2),
        "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "padding_share": round(1 - tokens / computed, 4) if computed else None,
        "trainable_parameters": trainable, "parameters": total, "device": device,
    }
    if spec.task == "classification":
        metrics["accuracy"] = after.get("accuracy")
        metrics["accuracy_before"] = before_all["eval"].get("accuracy")
    else:
        metrics["perplexity"] = after.get("perplexity")
        metrics["perplexity_before"] = before_all["eval"].get("perplexity")

    reporter.log("writing the result")
    out_dir.mkdir(parents=True, exist_ok=True)
    merged_dir = None
    if spec.method in ("lora", "qlora"):
        result_dir = out_dir / "adapter"
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = base_ref or str(base_dir)
        model.save_pretrained(result_dir)
        tokenizer.save_pretrained(result_dir)
        kind = "adapter"
        if spec.merge:
            merged_dir = out_dir / "merged"
            merged = model.merge_and_unload()
            merged.save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
    else:
        result_dir = out_dir / "model"
        trainer.model.save_pretrained(result_dir)
        tokenizer.save_pretrained(result_dir)
        kind = "model"
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return FinetuneResult(output=result_dir, kind=kind, merged=merged_dir, metrics=metrics,
                          before=before_all["eval"], after=after, samples=samples,
                          checkpoints=[p.name for p in checkpoints(run_dir)], stopped=stopped, notes=notes)
