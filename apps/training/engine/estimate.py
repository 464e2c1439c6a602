"""How much memory a fine-tuning run needs, from header-only facts (no torch): the new-run
form shows it as the user types, and a run logs it before it starts.

The figures are deliberately simple sums a user can check: weights, trainable parameters
with their gradients and AdamW's two moments, activations kept for the backward pass, the
logits, and a fixed runtime overhead.
"""

from __future__ import annotations

from pathlib import Path

from apps.registry.engine.components import catalogue, walk
from apps.registry.engine.model import read_model
from apps.training.engine.spec import FinetuneSpec

GiB = 1024**3
RUNTIME_OVERHEAD = {"cpu": int(0.6 * GiB), "cuda": int(1.0 * GiB)}  # torch, CUDA context, buffers


def _config_int(config: dict, *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def lora_trainable(model_dir: Path, targets: list[str] | None, r: int) -> tuple[int, list[str]]:
    """Parameters LoRA adds (r * (in + out) per targeted matrix) and the targets used."""
    files = read_model(model_dir)
    found: list[str] = []
    count = 0
    for comp in walk(catalogue(files)):
        if comp.kind not in ("attention", "mlp"):
            continue
        for name in comp.tensors:
            info = files.tensors[name]
            if not (name.endswith(".weight") and len(info.shape) == 2 and name.startswith(comp.prefix)):
                continue
            module = name[len(comp.prefix):-len(".weight")]
            if targets is None or any(module == t or module.endswith("." + t) or t.endswith("." + module)
                                      or t == module.split(".")[-1] for t in targets):
                count += r * (info.shape[0] + info.shape[1])
                if module not in found:
                    found.append(module)
    return count, found


def memory_estimate(spec: FinetuneSpec, model_dir: Path, *, device: str = "cpu") -> dict:
    """Peak memory of a run of `spec` on `device` ("cpu" or "cuda"), in bytes, with its parts."""
    files = read_model(model_dir)
    config = files.config or {}
    params = sum(t.numel for t in files.tensors.values())
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _config_int(config, "vocab_size")
    inter = _config_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    max_pos = _config_int(config, "max_position_embeddings", "n_positions") or 2048
    seq = spec.max_length or min(max_pos, 2048)
    batch = 8 if spec.batch_size == "auto" else spec.batch_size
    cuda = device.startswith("cuda")
    half = cuda  # mixed precision on CUDA, fp32 on a CPU
    if spec.method == "qlora":
        weight_bytes = 0.56  # 4-bit NF4 plus its scales
    elif spec.method == "lora" and cuda:
        weight_bytes = 2
    else:
        weight_bytes = 4
    if spec.method == "full":
        trainable, targets = params, []
    else:
        trainable, targets = lora_trainable(model_dir, spec.lora.target_modules, spec.lora.r)
    act_bytes = 2 if half else 4
    tokens = batch * seq
    # Per token and layer: attention and MLP inputs/outputs kept for backward, about 18
    # hidden widths plus 6 MLP widths (fitted to SmolLM2-135M's measured peak: 8.0 GB for
    # LoRA at batch 8 x 300 tokens on a CPU, 8.6 GB estimated); gradient checkpointing keeps
    # one hidden state a layer and recomputes one layer at a time.
    per_layer = tokens * (18 * hidden + 6 * inter) * act_bytes
    if spec.gradient_checkpointing:
        activations = tokens * hidden * act_bytes * layers + per_layer
    else:
        activations = per_layer * layers
    # fp32 logits, their log-softmax for the loss, and the gradient.
    logits = tokens * vocab * 4 * 3 if spec.task == "causal_lm" else batch * 64 * 4
    parts = {
        "weights": int(params * weight_bytes),
        "trainable": int(trainable * 4),
        "gradients": int(trainable * 4),
        "optimizer": int(trainable * 8),  # AdamW's two fp32 moments
        "activations": int(activations),
        "logits": int(logits),
        "runtime": RUNTIME_OVERHEAD["cuda" if cuda else "cpu"],
    }
    return {"bytes": sum(parts.values()), "parts": parts, "parameters": params,
            "trainable_parameters": int(trainable) if spec.method != "full" else params,
            "targets": targets, "device": "cuda" if cuda else "cpu", "batch_size": batch,
            "max_length": seq, "layers": layers, "hidden_size": hidden}


def suggested_defaults(parameters: int, *, cuda: bool) -> dict:
    """Defaults for the new-run form that fit a model of this size."""
    if parameters < 400e6:
        return {"method": "lora", "lora_r": 16, "batch_size": 8, "learning_rate": 2e-4,
                "gradient_checkpointing": False, "max_length": 512}
    if parameters < 3e9:
        return {"method": "lora", "lora_r": 16, "batch_size": 4, "learning_rate": 2e-4,
                "gradient_checkpointing": True, "max_length": 1024}
    return {"method": "qlora" if cuda else "lora", "lora_r": 8, "batch_size": 1, "learning_rate": 1e-4,
            "gradient_checkpointing": True, "max_length": 1024}
