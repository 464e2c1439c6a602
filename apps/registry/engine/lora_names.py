"""PEFT LoRA tensor names: the one matcher every reader of an adapter uses (the registry's
catalogue and compatibility check, assembly's planner and executor), so what one accepts
the others apply.

PEFT saves `base_model.model.<module>.lora_A.weight` (the prefix is the wrapper's path to
the base model), older or hand-made adapters leave the prefix out, and a named adapter
adds its name: `<module>.lora_A.<name>.weight`. Embedding LoRAs have `lora_embedding_A`/`_B`
parameters without `.weight`; DoRA adds `lora_magnitude_vector`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

PEFT_PREFIX = "base_model.model."
PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")

_NAME = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>" + "|".join(PARTS) + r")"
    r"(?:\.(?!weight$)(?P<adapter>[A-Za-z_]\w*))?(?:\.weight)?$"
)


class LoraName(NamedTuple):
    module: str  # the base model's module, without PEFT's prefix: model.layers.0.self_attn.q_proj
    part: str  # one of PARTS
    adapter: str | None  # the adapter's name when the tensor carries one ("default")


def lora_name(tensor_name: str) -> LoraName | None:
    """What a tensor of a PEFT adapter is, or None when it is not a LoRA tensor."""
    m = _NAME.match(tensor_name)
    return LoraName(m["module"], m["part"], m["adapter"]) if m else None


def lora_pairs(tensor_names, parts: tuple[str, ...] = ("lora_A", "lora_B")) -> dict[str, dict[str, str]]:
    """module -> {part: tensor name} for the tensors whose part is one of `parts`."""
    out: dict[str, dict[str, str]] = {}
    for name in tensor_names:
        found = lora_name(name)
        if found and found.part in parts:
            out.setdefault(found.module, {})[found.part] = name
    return out
