"""The run page's "Try it": one prompt answered by the base model and by the tuned one, side by side.

No Django: it takes the two folders. Generation is greedy and uses the tokenizer's chat
template (the same rendering the run trained on), so the two answers differ only by what
the fine-tune changed.
"""

from __future__ import annotations

from pathlib import Path

from apps.monitoring.engine.modelcache import load_causal_lm, load_tokenizer
from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter
from apps.training.engine.finetune import generate, pick_device


class TryItError(ValueError):
    """A generation that cannot run; the message says why."""


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                      "tokenizer.model", "vocab.json"))


def try_it(*, base_dir: Path, tuned_dir: Path, tuned_kind: str, prompt: str, max_new_tokens: int = 64,
           device: str | None = None, reporter: Reporter | None = None) -> dict:
    """{"prompt", "base", "tuned"}: the greedy answers of the base and of the tuned model.

    `tuned_kind` is "adapter" (a peft adapter over `base_dir`) or "model" (a whole model)."""
    import torch
    import transformers

    if tuned_kind not in ("adapter", "model"):
        raise TryItError(f"cannot generate with a {tuned_kind}; an adapter or a model is needed")
    reporter = reporter or NullReporter()
    transformers.utils.logging.disable_progress_bar()
    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    device = pick_device(device)
    dtype = torch.float32 if device == "cpu" else "auto"
    # The tuned side's tokenizer is the one the run saved (same vocabulary, maybe a pad token).
    tok_dir = tuned_dir if _has_tokenizer(tuned_dir) else base_dir
    # Both models come from the worker's model cache: trying another prompt answers without
    # loading them again. Cached objects are shared, so nothing here changes them: the
    # tokenizer's pad token is set by the loader, and an adapter goes on a copy of the base.
    tokenizer, _ = load_tokenizer(tok_dir, pad_to_eos=True)
    reporter.step(0, 2)
    reporter.log(f"generating with the base model on {device}")
    base, hit = load_causal_lm(base_dir, dtype=dtype, device=device)
    if hit:
        reporter.log("the base model was already loaded (model cache)")
    [base_text] = generate(base, tokenizer, [prompt], max_new_tokens, device)
    reporter.step(1, 2)
    if reporter.cancelled():
        raise JobCancelled("stopped after the base model's answer")
    reporter.log("generating with the tuned model")
    if tuned_kind == "adapter":
        import copy

        import peft

        # peft wraps the layers of the model it is given in place: give it a copy.
        tuned = peft.PeftModel.from_pretrained(copy.deepcopy(base), tuned_dir).to(device).eval()
    else:
        del base
        tuned, _ = load_causal_lm(tuned_dir, dtype=dtype, device=device)
    [tuned_text] = generate(tuned, tokenizer, [prompt], max_new_tokens, device)
    reporter.step(2, 2)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"prompt": prompt, "base": base_text, "tuned": tuned_text, "device": device}
