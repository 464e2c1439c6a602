"""Running a plan: every output tensor computed from its sources, one at a time, and written
as sharded safetensors into a temporary folder that becomes the model folder only when
everything — weights, config, tokenizer, model card — is there.

Memory holds one output tensor's inputs and result (and a LoRA pair when an adapter is
applied), whatever the model's size. CUDA is used when there is one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import math
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter
from apps.registry.engine.lora_names import lora_pairs
from apps.registry.engine.model import read_model
from apps.registry.engine.tensor_io import ShardFiles
from apps.registry.engine.types import ModelFiles, TensorInfo

from .methods.registry import get_method
from .plan import OutputTensor, Plan
from .recipe import DTYPES
from .vocabulary import OutputVocabulary, VocabularyError, build_vocabulary, permute
from .writer import DEFAULT_SHARD_BYTES, OutTensor, ShardedWriter

TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool"}
SIDE_FILES = ("generation_config.json",)
CPU_WINDOW = 2  # outputs merged at once on a CPU
# Methods whose pruning holds several full-size work tensors per task vector (sort keys and
# int32 positions, int64 indices where torch sorts, or float32 draw probabilities): the schedule
# counts them SORT_COST times, the most any of them takes.
TRIM_SHARE = 16  # after an output costing 1/TRIM_SHARE of the budget or more, free memory goes back
SORT_COST = 6  # their working memory per element and core, in elements of a 16-bit tensor
SORTING_METHODS = frozenset({"ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
                             "della", "della_linear"})


class ExecutionError(RuntimeError):
    pass


@dataclass
class RunResult:
    dest: Path
    files: list[str]
    tensors: int
    bytes: int
    seconds: float
    device: str
    hashes: dict[str, str]  # weight file -> its sha256, taken as it was written


def _torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


class _Adapter:
    """A PEFT LoRA folded into a model's weights as they are read: W + (alpha/r)·B·A."""

    def __init__(self, path: Path):
        self.files = read_model(path)
        self.shards = ShardFiles(self.files.root)
        cfg = self.files.adapter_config or {}
        self.alpha, self.r = cfg.get("lora_alpha", 8), cfg.get("r", 8)
        self.alpha_pattern, self.rank_pattern = cfg.get("alpha_pattern") or {}, cfg.get("rank_pattern") or {}
        self.pairs: dict[str, dict[str, TensorInfo]] = {
            module: {part: self.files.tensors[name] for part, name in parts.items()}
            for module, parts in lora_pairs(self.files.tensors).items()}

    def _scale(self, module: str) -> float:
        def pick(pattern: dict, default):
            return next((v for k, v in pattern.items() if module == k or module.endswith("." + k)), default)

        return pick(self.alpha_pattern, self.alpha) / pick(self.rank_pattern, self.r)

    def load_pair(self, tensor_name: str):
        """(A, B, scale) for the module this weight belongs to, or None."""
        module = tensor_name.removesuffix(".weight")
        pair = self.pairs.get(module)
        if pair is None or "lora_A" not in pair or "lora_B" not in pair:
            return None
        return _load(self.shards, pair["lora_A"]), _load(self.shards, pair["lora_B"]), self._scale(module)

    @staticmethod
    def apply(weight, pair):
        a, b, scale = pair
        return (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)


def _load(shards: ShardFiles, info: TensorInfo):
    import torch

    raw = shards.read_raw(info)  # a writable buffer: torch wraps it without a copy
    dtype = _torch_dtype(info.dtype)
    if not raw.nbytes:
        return torch.empty(info.shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype).reshape(info.shape)


class _Inputs:
    def __init__(self, plan: Plan):
        self.lock = threading.Lock()
        self.models: dict[str, tuple[ModelFiles, ShardFiles, _Adapter | None]] = {}
        for m in plan.models:
            files = read_model(m.path)
            adapter = _Adapter(Path(m.adapter["path"])) if m.adapter else None
            self.models[m.ref] = (files, ShardFiles(files.root), adapter)

    def tensor(self, model: str, name: str):
        files, shards, adapter = self.models[model]
        info = files.tensors.get(name)
        if info is None:
            raise ExecutionError(f"model {model!r} has no tensor {name!r} (changed since the plan?)")
        with self.lock:  # shard files are shared by the merging threads: one read at a time
            weight = _load(shards, info)
            pair = adapter.load_pair(name) if adapter else None
        return _Adapter.apply(weight, pair) if pair else weight

    def close(self):
        for _, shards, adapter in self.models.values():
            shards.close()
            if adapter:
                adapter.shards.close()


def _merge_one(out: OutputTensor, inputs: _Inputs, plan: Plan, device: str, compute_dtype,
               workers: int = 1, vocabulary: OutputVocabulary | None = None):
    from .methods.spec import tensor_generator

    method = get_method(out.method)

    def ready(t):
        t = t.to(device)
        return t.to(compute_dtype) if compute_dtype is not None and t.is_floating_point() else t

    loaded = [ready(inputs.tensor(s.model, s.tensor)) for s in out.sources]
    if vocabulary is not None and out.embedding:
        # Rows follow tokens: each model's re-ordered to the output vocabulary first.
        try:
            by_model = permute(vocabulary, dict(zip((s.model for s in out.sources), loaded, strict=True)))
        except VocabularyError as exc:
            raise ExecutionError(f"{out.name}: {exc}") from exc
        loaded = [by_model[s.model] for s in out.sources]
        del by_model
    model_src = [s for s in out.sources if s.role != "base"]
    tensors = [t for s, t in zip(out.sources, loaded, strict=True) if s.role != "base"]
    base = next((t for s, t in zip(out.sources, loaded, strict=True) if s.role == "base"), None)
    del loaded  # the method is handed the only list of the models' tensors, to free them early
    generator = None
    if not method.deterministic:
        generator = tensor_generator(plan.recipe.random_seed or 0, out.name, device=device)
    merged = method.merge(tensors, base, [s.params for s in model_src], out.params, generator=generator,
                          workers=workers, consume=True)
    if tuple(merged.shape) != tuple(out.shape):
        raise ExecutionError(f"{out.name}: {out.method} gave shape {list(merged.shape)}, the plan says "
                             f"{list(out.shape)}")
    return merged.to(_torch_dtype(out.dtype)).contiguous().cpu()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, another system)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _return_free_memory() -> None:
    """Hand the memory a finished output freed back to the system. glibc keeps freed blocks
    in per-thread arenas for reuse; with outputs of very different sizes merged on several
    threads those pile up, and the process's footprint grows well past what it ever uses at
    once."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _model_count(out: OutputTensor) -> int:
    """The models an output merges (its base aside)."""
    return sum(s.role != "base" for s in out.sources)


class _Schedule:
    """Which outputs run at once, with how many cores each, largest first.

    Costs are in tensor elements of working memory: an output takes its element count, and a
    sorting method SORT_COST times that for each core it works on. The budget is what the plan's
    most expensive output needs on its own plus a quarter, or two typical (median) outputs if
    that is more: smaller outputs run beside a large one only within it, and a plan of equal
    outputs still runs two at once. Largest first, so the
    long outputs overlap the many short ones instead of running alone at the end; results are
    written as they come (the writer puts each in its planned place). With `largest_first`
    off, in the plan's order, which is the files' order: for plans without a sorting method,
    whose outputs all take about as long per element, so that the writer hashes each shard as
    it is written.
    """

    def __init__(self, outputs: list[OutputTensor], *, cores: int, at_once: int, largest_first: bool = True):
        self.cores, self.at_once = max(1, cores), max(1, at_once)
        self.outputs = (sorted(outputs, key=lambda o: self.cost(o, 1), reverse=True) if largest_first
                        else list(outputs))
        self._todo: deque = deque()
        self._running: dict = {}
        alone = sorted(self.cost(o, 1) for o in outputs)
        typical = alone[len(alone) // 2] if alone else 0
        self.budget = max(max(alone, default=0) * 5 // 4, 2 * typical)

    @staticmethod
    def splits(out: OutputTensor) -> bool:
        """Whether the output's models can be worked on side by side."""
        return get_method(out.method).splits_by_model and _model_count(out) > 1

    @staticmethod
    def cost(out: OutputTensor, workers: int) -> int:
        size = max(1, math.prod(out.shape))
        return size * SORT_COST * workers if out.method in SORTING_METHODS else size

    def wanted(self, out: OutputTensor) -> int:
        """Cores for one output: its share of the machine when `at_once` run together."""
        if not self.splits(out):
            return 1
        return max(1, min(self.cores // self.at_once, _model_count(out)))

    def large_ahead(self) -> bool:
        """Whether an output of a quarter of the budget or more is running or still to start."""
        return any(self.cost(o, 1) * 4 >= self.budget
                   for o in [*self._todo, *(out for out, _ in self._running.values())])

    def run(self, start, finish, cancelled) -> None:
        """start(out, workers) -> future; finish(out, result) as each is done."""
        todo = self._todo = deque(self.outputs)
        running: dict = {}  # future -> (out, cost)
        self._running = running
        spent = 0
        while todo or running:
            if cancelled():
                raise JobCancelled
            while todo and len(running) < self.at_once:
                # The largest output that fits beside what runs (any, when nothing does).
                out = next((o for o in todo if not running or spent + self.cost(o, 1) <= self.budget), None)
                if out is None:
                    break  # the next starts when what runs now is done
                workers = self.wanted(out)
                while workers > 1 and running and spent + self.cost(out, workers) > self.budget:
                    workers -= 1  # fewer cores where that fits the budget
                todo.remove(out)
                cost = self.cost(out, workers)
                running[start(out, workers)] = (out, cost)
                spent += cost
            done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                out, cost = running.pop(future)
                finish(out, future.result())
                spent -= cost


def memory_bound(plan: Plan) -> bool:
    """Whether the plan has a sorting method: its merge takes long and its peak memory is the
    machine's limit, so it is better run in the command's own process than in an engine
    process beside it (which saves only torch's import time, and costs a second interpreter's
    memory)."""
    return any(o.method in SORTING_METHODS for o in plan.outputs)


def execute(plan: Plan, dest: Path, *, recipe_text: str | None = None, card_lines: list[str] = (),
            reporter: Reporter | None = None, device: str | None = None,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES, mirror: Path | None = None) -> RunResult:
    """Compute and write the model into the new folder `dest`; with `mirror`, into that new
    folder as well, from the same bytes (not synced: a copy for the user, which the caller
    moves into place or removes)."""
    import torch

    reporter = reporter or NullReporter()
    dest = Path(dest)
    if dest.exists():
        raise ExecutionError(f"{dest} already exists")
    vocabulary = _output_vocabulary(plan) if plan.tokenizer.get("rebuilt") else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    compute = _torch_dtype(DTYPES[plan.recipe.dtype]) if plan.recipe.dtype else None
    if mirror is not None and (mirror.exists() or mirror.is_symlink()):
        raise ExecutionError(f"{mirror} already exists")
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    inputs = _Inputs(plan)
    planned = [OutTensor(o.name, o.dtype, o.shape) for o in plan.outputs]
    # Without a sorting method, outputs run in the files' order and each shard is hashed as it
    # is written, holding at most two outputs that came early; otherwise (largest first) the
    # shards are read back to hash them while their last writes reach the disk.
    in_order = not memory_bound(plan)
    held = 2 * max((t.nbytes for t in planned), default=0) if in_order else 0
    writer = ShardedWriter(tmp, planned, max_shard_bytes=max_shard_bytes, metadata={"audobon": "assembled"},
                           mirror=mirror, hash_held_bytes=held)
    total = sum(t.nbytes for t in planned)
    try:
        # On a CPU several outputs are merged at once (each torch op then gets fewer cores), and a
        # sorting method sorts its models' task vectors side by side, one core each; how much runs
        # at once is capped by a memory budget, so the peak stays that of the plan's largest
        # tensor. Results are written in plan order.
        threads = torch.get_num_threads()
        cpu = device == "cpu"
        torch.set_num_threads(max(1, threads // CPU_WINDOW) if cpu else threads)
        try:
            with torch.no_grad(), ThreadPoolExecutor(max_workers=CPU_WINDOW if cpu else 1) as pool:
                done = 0

                def start(out: OutputTensor, workers: int):
                    return pool.submit(_merge_one, out, inputs, plan, device, compute, workers, vocabulary)

                def finish(out: OutputTensor, merged) -> None:
                    nonlocal done
                    writer.write(out.name, merged.view(torch.uint8).numpy() if merged.numel() else b"")
                    # Only while a large output is still running or to come: the peak is theirs.
                    # Sorting methods' scratch is what fragments the heap; plain merges leave it be.
                    sizable = (out.method in SORTING_METHODS
                               and schedule.cost(out, 1) * TRIM_SHARE >= schedule.budget)
                    if cpu and sizable and schedule.large_ahead():
                        _return_free_memory()
                    done += 1
                    elapsed = max(time.monotonic() - started, 1e-6)
                    reporter.step(done, len(plan.outputs), mb_s=writer.bytes_written / elapsed / 1e6)

                schedule = _Schedule(plan.outputs, cores=threads if cpu else 1,
                                     at_once=CPU_WINDOW if cpu else 1, largest_first=not in_order)
                schedule.run(start, finish, reporter.cancelled)
        finally:
            torch.set_num_threads(threads)
        files = writer.close()
        _write_side_files(plan, tmp, recipe_text, card_lines, vocabulary)
        if mirror is not None:  # the same small files: the copy is the model the store holds
            for path in tmp.iterdir():
                if path.is_dir():
                    shutil.copytree(path, mirror / path.name)
                elif not (mirror / path.name).exists():
                    shutil.copyfile(path, mirror / path.name)
        os.rename(tmp, dest)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if mirror is not None:
            shutil.rmtree(mirror, ignore_errors=True)
        raise
    finally:
        inputs.close()
    return RunResult(dest, files, len(plan.outputs), total, time.monotonic() - started, device,
                     dict(writer.hashes))


def _output_vocabulary(plan: Plan) -> OutputVocabulary:
    """The rebuilt vocabulary; the plan's embedding rows and vocab_size follow its exact size
    (the plan counted tokens without loading the tokenizers)."""
    try:
        vocabulary = build_vocabulary(plan)
    except (VocabularyError, OSError, ValueError) as exc:
        raise ExecutionError(f"building the output tokenizer: {exc}") from exc
    for out in plan.outputs:
        if out.embedding and out.shape[0] != vocabulary.rows:
            out.shape = (vocabulary.rows, *out.shape[1:])
    if "vocab_size" in plan.config:
        plan.config["vocab_size"] = vocabulary.rows
    plan.tokenizer.update({"vocab_size": len(vocabulary.vocab), "embedding_rows": vocabulary.rows,
                           "estimated": False})
    return vocabulary


def _write_side_files(plan: Plan, folder: Path, recipe_text: str | None, card_lines,
                      vocabulary: OutputVocabulary | None = None) -> None:
    (folder / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True))
    by_ref = {m.ref: m for m in plan.models}
    origin = by_ref.get(plan.tokenizer.get("from"))
    if vocabulary is not None:
        vocabulary.save(folder)
    if origin is not None:
        copied = SIDE_FILES if vocabulary is not None else [*(plan.tokenizer.get("files") or []), *SIDE_FILES]
        for name in copied:
            src = Path(origin.path) / name
            if src.is_file():
                shutil.copyfile(src, folder / name)
        template = plan.tokenizer.get("chat_template")
        tok_cfg = folder / "tokenizer_config.json"
        if template and tok_cfg.is_file():
            data = json.loads(tok_cfg.read_text())
            data["chat_template"] = template
            tok_cfg.write_text(json.dumps(data, indent=2))
    text = recipe_text or plan.recipe.to_yaml()
    (folder / "audobon-recipe.yaml").write_text(text)
    models = "\n".join(f"- `{m.ref}` ({', '.join(m.roles)})" for m in plan.models)
    card = [
        "---", "library_name: transformers", "tags:", "- audobon", "- merge", f"- {plan.method}", "---", "",
        f"# {folder.name.split('.tmp-')[0].lstrip('.')}", "",
        f"Assembled by Audobon with the `{plan.method}` method from:", "", models, "",
        *card_lines, "", "## Recipe", "", "```yaml", text.rstrip(), "```", "",
    ]
    (folder / "README.md").write_text("\n".join(card))
