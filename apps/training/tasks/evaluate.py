"""Job kind "evaluate": loss and perplexity of one causal LM on a library dataset's texts or the
built-in validation texts, in the heavy worker, where the model cache keeps the model loaded
for the next evaluation. Nothing is registered: the numbers are the job's result."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from apps.monitoring.jobkinds import job_kind


class EvaluateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=1000,
                       description="a library model (NAME[@N]) or a model folder")
    dataset: str | None = Field(default=None, max_length=300,
                                description="a library dataset (NAME[@N]); default: the built-in texts")
    texts: int = Field(default=32, ge=1, le=2000, description="how many texts to evaluate on")
    max_tokens: int = Field(default=256, ge=8, le=8192, description="each text is cut at this many tokens")
    device: str | None = Field(default=None, pattern=r"^(cpu|cuda(:\d+)?)$")

    @model_validator(mode="after")
    def _resolvable(self):
        # Refused at submit time: nothing is queued for a model or dataset that is not there.
        evaluate_inputs(self)
        return self


def evaluate_inputs(spec: EvaluateSpec) -> tuple[Path, str, Path | None, str | None]:
    """(model folder, model label, dataset folder or None, dataset label or None); ValueError
    naming the model or dataset that cannot be found."""
    from apps.assets.models import Asset
    from apps.registry import services as registry_services
    from apps.training import selectors
    from apps.training.services.dataset import dataset_folder

    try:
        model_dir, version = registry_services.resolve_model(spec.model)
    except LookupError as exc:
        raise ValueError(f"model: {exc}") from None
    if version is not None and version.asset.kind not in (Asset.Kind.MODEL, Asset.Kind.COMPONENT):
        raise ValueError(f"model: {spec.model!r} is a {version.asset.kind}, not a model")
    if not model_dir.is_dir():
        raise ValueError(f"model: {spec.model!r} is not a model folder")
    dataset_dir = dataset_label = None
    if spec.dataset:
        try:
            dataset = selectors.dataset_version_get(ref=spec.dataset)
        except LookupError as exc:
            raise ValueError(f"dataset: {exc}") from None
        dataset_dir, dataset_label = dataset_folder(dataset), str(dataset)
    return model_dir, str(version) if version else str(model_dir), dataset_dir, dataset_label


def _needs(spec: EvaluateSpec) -> dict:
    """The model's weights in their stored dtype and the logits of one text (headers only)."""
    from apps.assembly.engine.validation import model_memory

    model_dir = evaluate_inputs(spec)[0]
    return {"memory": model_memory(model_dir, max_tokens=spec.max_tokens), "disk": 0,
            "device": spec.device or "cpu"}


@job_kind(name="evaluate", spec=EvaluateSpec, area="training", label="Evaluate a model", queue="heavy",
          needs=_needs)
def evaluate(spec: EvaluateSpec, reporter, job) -> dict:
    from apps.training.engine.evaluate import evaluate as run_evaluation

    model_dir, model_label, dataset_dir, dataset_label = evaluate_inputs(spec)
    result = run_evaluation(model_dir, dataset_dir=dataset_dir, texts=spec.texts,
                            max_tokens=spec.max_tokens, device=spec.device, reporter=reporter,
                            label=model_label)
    return {"model": model_label, "dataset": dataset_label, **result,
            "source": dataset_label or result["source"]}
