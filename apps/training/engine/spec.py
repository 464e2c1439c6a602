"""The fine-tuning spec: what `audobon finetune SPEC.yaml`, the new-run form and a job carry.

Plain pydantic, torch-free: the web process parses and checks it, the heavy worker (or a
container) runs it. Unknown keys are refused with their place named.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from apps.assets.engine.safeparse import yaml_load

MAX_SPEC_BYTES = 64 * 1024
MAX_SPEC_DEPTH = 64


class FinetuneSpecError(ValueError):
    """A spec that cannot run; the message names the key."""


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # Module paths inside a block (`self_attn.q_proj`, `attention.self.query`); found from
    # the model's component catalogue when not given.
    target_modules: list[str] | None = None


class FinetuneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(min_length=1, description="library NAME[@VERSION] or a model folder")
    dataset: str = Field(min_length=1, description="a dataset in the library, NAME[@VERSION]")
    task: Literal["causal_lm", "classification"] = "causal_lm"
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraParams = Field(default_factory=LoraParams)
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    batch_size: int | Literal["auto"] = 4
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    max_steps: int = Field(default=100, ge=1, le=10_000_000)
    eval_steps: int = Field(default=50, ge=1)
    save_steps: int = Field(default=50, ge=1)
    save_total_limit: int = Field(default=2, ge=1, le=100, description="checkpoints kept")
    logging_steps: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    packing: bool = False
    group_by_length: bool = Field(default=True, description="without packing, batch rows of similar "
                                                            "length together: less padding to compute")
    max_length: int | None = Field(default=None, ge=8, le=1_048_576)
    warmup_steps: int = Field(default=0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(default=0.0, ge=0)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    early_stopping_patience: int | None = Field(default=None, ge=1)
    max_minutes: float | None = Field(default=None, gt=0, description="a time budget")
    eval_max_rows: int = Field(default=256, ge=1, description="validation rows evaluated")
    samples: list[str] | None = Field(default=None, max_length=8,
                                      description="prompts generated before and after "
                                                  "(default: two from the validation split; [] for none)")
    sample_max_new_tokens: int = Field(default=40, ge=1, le=1024)
    merge: bool = Field(default=False, description="also register the merged model")
    name: str | None = Field(default=None, description="the result's asset name")
    device: str | None = Field(default=None, description="cpu, cuda or cuda:N (default: best)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.batch_size != "auto" and not 1 <= self.batch_size <= 4096:
            raise ValueError("batch_size must be 'auto' or between 1 and 4096")
        if self.early_stopping_patience and self.save_steps % self.eval_steps:
            raise ValueError("early_stopping_patience needs save_steps to be a multiple of eval_steps "
                             "(the best checkpoint is kept)")
        if self.task == "classification" and self.packing:
            raise ValueError("packing applies to causal_lm only")
        return self


def spec_errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        place = ".".join(str(p) for p in err["loc"]) or "(spec)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{place}: {msg}")
    return out


def spec_parse(data: dict) -> FinetuneSpec:
    try:
        return FinetuneSpec.model_validate(data)
    except ValidationError as exc:
        raise FinetuneSpecError("; ".join(spec_errors(exc))) from None


def spec_yaml_load(text: str | bytes, *, source: str, max_bytes: int, error: type[ValueError]):
    """A training spec's YAML, parsed only when small, not too deep and free of anchors:
    aliases can multiply a small file into a huge structure, and a spec never needs them.
    `error` is raised with the source and the reason."""
    return yaml_load(text, source=source, max_bytes=max_bytes, max_depth=MAX_SPEC_DEPTH,
                     max_nodes=None, aliases=False, error=error)


def spec_from_yaml(text: str, *, source: str = "spec") -> FinetuneSpec:
    data = spec_yaml_load(text, source=source, max_bytes=MAX_SPEC_BYTES, error=FinetuneSpecError)
    if not isinstance(data, dict):
        raise FinetuneSpecError(f"{source}: a spec is a mapping of keys (base_model, dataset, ...)")
    try:
        return FinetuneSpec.model_validate(data)
    except ValidationError as exc:
        raise FinetuneSpecError(f"{source}: " + "; ".join(spec_errors(exc))) from None
