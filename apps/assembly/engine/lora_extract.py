"""LoRA extraction: the difference between a fine-tune and its base, per linear module, as a
truncated SVD — a PEFT adapter that `PeftModel.from_pretrained(base, adapter)` loads.

For each 2-D weight inside the model's blocks (attention and MLP), delta = tuned - base
is factored as U·S·Vᵀ and cut to a rank chosen either fixed (`rank`) or as the smallest
that keeps `energy` of the squared singular values. lora_B = U_r·S_r and lora_A = V_rᵀ,
with lora_alpha = r so PEFT's scale alpha/r is 1 and B·A approximates delta directly.
Tensors are read one module at a time, so memory holds a few matrices, not models.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter
from apps.registry.engine.components import catalogue, walk
from apps.registry.engine.model import read_model

LINEAR_KINDS = ("attention", "mlp")
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


class ExtractionError(ValueError):
    pass


@dataclass
class ModuleResult:
    module: str
    rank: int
    full_rank: int
    energy: float  # share of the squared singular values kept
    rel_error: float  # ‖delta - B·A‖ / ‖delta‖ (0 when delta is 0)


def _modules(base_dir: Path, tuned_dir: Path, targets: list[str] | None) -> list[tuple[str, object, object]]:
    base, tuned = read_model(base_dir), read_model(tuned_dir)
    chosen = []
    for comp in walk(catalogue(base)):
        if comp.kind not in LINEAR_KINDS or comp.children:
            continue
        for name in comp.tensors:
            info = base.tensors[name]
            if not name.endswith(".weight") or len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES:
                continue
            module = name[: -len(".weight")]
            if targets and not any(module == t or module.endswith("." + t) for t in targets):
                continue
            other = tuned.tensors.get(name)
            if other is None:
                raise ExtractionError(f"{tuned_dir}: tensor {name!r} of the base is missing")
            if other.shape != info.shape:
                raise ExtractionError(f"tensor {name!r}: base {list(info.shape)} vs tuned "
                                      f"{list(other.shape)}; not a fine-tune of this base")
            chosen.append((module, base, tuned))
    if not chosen:
        raise ExtractionError(f"{base_dir}: no linear module to extract" +
                              (f" among {targets}" if targets else ""))
    return chosen


def _load(model, name: str):
    import torch
    from safetensors import safe_open

    info = model.tensors[name]
    with safe_open(str(model.root / info.file), framework="pt") as f:
        return f.get_tensor(name).to(torch.float32)


def _rank_for(s, *, rank: int | None, energy: float | None) -> tuple[int, float]:
    import torch

    total = float(torch.sum(s * s))
    if total == 0.0:
        return 0, 1.0
    kept = torch.cumsum(s * s, 0) / total
    if rank is not None:
        r = min(rank, s.numel())
    else:
        r = int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1
        r = min(r, s.numel())
    return r, float(kept[r - 1]) if r else 0.0


def extract_lora(base_dir: Path, tuned_dir: Path, dest: Path, *, rank: int | None = None,
                 energy: float | None = None, targets: list[str] | None = None,
                 reporter: Reporter | None = None, device: str | None = None) -> list[ModuleResult]:
    """Write a PEFT LoRA adapter to the new folder `dest` (temp + rename); return the rank,
    kept energy and reconstruction error of every module. The SVDs run on CUDA when present."""
    import torch
    from safetensors.torch import save_file

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    reporter = reporter or NullReporter()
    if (rank is None) == (energy is None):
        raise ExtractionError("give exactly one of rank (an integer ≥ 1) or energy (in (0, 1])")
    if rank is not None and rank < 1:
        raise ExtractionError(f"rank must be at least 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ExtractionError(f"energy must be in (0, 1], got {energy}")
    if dest.exists():
        raise ExtractionError(f"{dest} already exists")
    modules = _modules(Path(base_dir), Path(tuned_dir), targets)
    tensors: dict[str, torch.Tensor] = {}
    results: list[ModuleResult] = []
    for i, (module, base, tuned) in enumerate(modules, 1):
        if reporter.cancelled():
            raise JobCancelled
        delta = (_load(tuned, module + ".weight").to(device) - _load(base, module + ".weight").to(device))
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r, kept = _rank_for(s.cpu(), rank=rank, energy=energy)
        r = max(r, 1)  # PEFT needs a rank; an unchanged module gets a zero rank-1 pair
        b = u[:, :r] * s[:r]
        a = vh[:r, :]
        norm = float(torch.linalg.norm(delta))
        err = float(torch.linalg.norm(delta - b @ a)) / norm if norm else 0.0
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = a.contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = b.contiguous().cpu()
        results.append(ModuleResult(module, r, s.numel(), kept, err))
        reporter.step(i, len(modules), rel_error=err)
    max_r = max(m.rank for m in results)
    base_model = read_model(Path(base_dir))
    archs = (base_model.config or {}).get("architectures") or []
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if any(a.endswith("ForCausalLM") for a in archs) else None,
        "base_model_name_or_path": str(base_dir), "r": max_r, "lora_alpha": max_r,
        "target_modules": [m.module for m in results],
        "rank_pattern": {m.module: m.rank for m in results if m.rank != max_r},
        "alpha_pattern": {m.module: m.rank for m in results if m.rank != max_r},
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
    }
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        (tmp / "extraction.json").write_text(json.dumps({
            "base": str(base_dir), "tuned": str(tuned_dir), "rank": rank, "energy": energy,
            "modules": [asdict(m) for m in results],
            "mean_rel_error": math.fsum(m.rel_error for m in results) / len(results),
        }, indent=1))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return results
