"""The accounting of every input tensor (used by some output, or dropped with a reason) and
the estimate of a merge's disk, read, memory and time, which says what it assumes:
    disk    = output tensor bytes + tokenizer and config files copied
    read    = bytes of every source tensor read (once per use) + LoRA adapters
    memory  = max over output tensors of (its inputs at the compute dtype x the method's
              working-copy factor + the output tensor) + one write buffer
    time    = read / 500 MB/s + written / 500 MB/s + elements x inputs x the method's
              cost per element (a CPU figure; a GPU is faster)
plus validating the result against its parents afterwards."""

from __future__ import annotations

import json

from ..recipe import DTYPES
from ..validation import evaluation_need
from .context import PlanContext
from .errors import UnaccountedTensorError
from .result import Estimate, byte_size, count_elements

READ_BYTES_PER_S = 500e6  # an ordinary SSD, streamed
WRITE_BYTES_PER_S = 500e6
WRITE_BUFFER_BYTES = 1 << 30  # the writer holds at most this much of a shard before flushing
# Validation: each model's loss on this many texts of up to VALIDATION_TOKENS tokens, one
# model at a time, at this many floating-point operations a second (a CPU figure).
VALIDATION_TEXTS = 16
VALIDATION_TOKENS = 256
VALIDATION_FLOPS = 50e9
# Working copies a method holds per input (deltas, masks, float32 upcasts), and its cost in
# nanoseconds per element per input on a CPU. Rough on purpose: they rank, they do not promise.
MEMORY_FACTOR = {"passthrough": 1.0, "graft": 1.0, "linear": 2.0, "slerp": 3.0, "nuslerp": 3.0,
                 "model_stock": 3.0, "task_arithmetic": 3.0, "ties": 3.5, "breadcrumbs": 3.5,
                 "breadcrumbs_ties": 3.5, "dare_linear": 4.0, "dare_ties": 4.0, "della": 4.5,
                 "della_linear": 4.5}
COST_NS = {"passthrough": 0.0, "graft": 0.0, "linear": 1.0, "slerp": 3.0, "nuslerp": 3.0,
           "model_stock": 3.0, "task_arithmetic": 2.0, "ties": 6.0, "breadcrumbs": 8.0,
           "breadcrumbs_ties": 9.0, "dare_linear": 5.0, "dare_ties": 7.0, "della": 12.0,
           "della_linear": 11.0}


def account(ctx: PlanContext) -> None:
    """Every input tensor of every model that takes part is used or dropped with a reason."""
    ctx.used = {(s.model, s.tensor) for o in ctx.outputs for s in o.sources}
    missing = []
    for key, model in ctx.models.items():
        if not {"source", "base", "donor"} & set(model.roles):
            continue
        for name in model.files.tensors:
            if (key, name) not in ctx.used and (key, name) not in ctx.drops:
                missing.append(f"{key!r} {name}")
    if missing:
        raise UnaccountedTensorError(f"{len(missing)} input tensor(s) are neither used nor dropped "
                                     f"with a reason: {', '.join(missing[:5])}")


def estimate_plan(ctx: PlanContext, tokenizer: dict, config: dict) -> Estimate:
    """Disk, read, peak memory and time of the merge, and of validating it afterwards."""
    read = 0
    peak = 0
    largest = None
    cost = 0.0
    compute = DTYPES.get(ctx.recipe.dtype or "", None)
    for out in ctx.outputs:
        method = out.method
        inputs = 0
        for s in out.sources:
            numel = count_elements(s.shape)
            read += byte_size(numel, s.dtype)
            inputs += byte_size(numel, compute or s.dtype)
            cost += numel * COST_NS.get(method, 5.0) * 1e-9
        need = int(inputs * MEMORY_FACTOR.get(method, 3.0)) + out.nbytes
        if need > peak:
            peak, largest = need, out.name
    read += sum(m.adapter_bytes for m in ctx.models.values())
    output_bytes = sum(o.nbytes for o in ctx.outputs)
    origin = ctx.models.get(tokenizer.get("from") or "", ctx.template)
    side_files = [origin.files.root / n for n in tokenizer.get("files") or []]
    side = sum(p.stat().st_size for p in side_files if p.is_file())
    side += len(json.dumps(ctx.template.files.config or {}))
    write = min(output_bytes, WRITE_BUFFER_BYTES)
    seconds = read / READ_BYTES_PER_S + output_bytes / WRITE_BYTES_PER_S + cost
    texts = (ctx.recipe.validation and ctx.recipe.validation.max_samples) or VALIDATION_TEXTS
    numel_out = sum(count_elements(o.shape) for o in ctx.outputs)
    checked = {"result": (output_bytes, numel_out, config)}
    for m in ctx.models.values():
        if set(m.roles) & {"source", "base"}:
            checked[m.key] = (sum(t.nbytes for t in m.files.tensors.values()),
                              sum(count_elements(t.shape) for t in m.files.tensors.values()), m.files.config)
    needs = {label: evaluation_need(b, cfg, max_tokens=VALIDATION_TOKENS)
             for label, (b, _, cfg) in checked.items()}
    validation_seconds = sum(b / READ_BYTES_PER_S + 2 * n * texts * VALIDATION_TOKENS / VALIDATION_FLOPS
                             for b, n, _ in checked.values())
    return Estimate(
        read_bytes=read, output_bytes=output_bytes, disk_bytes=output_bytes + side,
        peak_memory_bytes=peak + write, seconds=seconds, largest_tensor=largest,
        assumptions={"read_bytes_per_s": READ_BYTES_PER_S, "write_bytes_per_s": WRITE_BYTES_PER_S,
                     "write_buffer_bytes": WRITE_BUFFER_BYTES,
                     "memory_factor": MEMORY_FACTOR.get(ctx.method.name, 3.0),
                     "cost_ns_per_element": COST_NS.get(ctx.method.name, 5.0),
                     "compute_dtype": ctx.recipe.dtype or "the inputs' own",
                     "validation_texts": texts, "validation_tokens": VALIDATION_TOKENS,
                     "validation_flops": VALIDATION_FLOPS},
        validation_peak_memory_bytes=max(needs.values()), validation_seconds=validation_seconds,
        validation_models=needs,
    )
