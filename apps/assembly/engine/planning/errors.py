"""The errors of planning: every one a PlanError whose message says where and why."""

from __future__ import annotations


class PlanError(ValueError):
    """The recipe cannot be carried out on these models; the message says where and why."""


class ModelNotFoundError(PlanError):
    """The resolver does not know a model reference, or it points at nothing."""


class ModelReadError(PlanError):
    """A model's headers are broken, or it holds no safetensors weights."""


class AdapterError(PlanError):
    """A `model+lora` adapter is not a PEFT adapter, or does not fit its model."""


class UnknownMethodError(PlanError):
    pass


class ParameterError(PlanError):
    """Base of the parameter problems."""


class UnknownParameterError(ParameterError):
    pass


class MisplacedParameterError(ParameterError):
    """A method-wide parameter set for one model, where mergekit would ignore it."""


class MissingParameterError(ParameterError):
    pass


class ParameterValueError(ParameterError):
    """A value of the wrong kind (a weight that is not a number) or range (density outside (0, 1])."""


class BaseModelRequiredError(PlanError):
    pass


class SourceCountError(PlanError):
    """The method takes another number of models than the recipe gives it."""


class ShapeMismatchError(PlanError):
    """Models merged together do not have the same tensors, shapes or layer counts."""


class LayerRangeError(PlanError):
    """A slice's layer_range asks for layers its model does not have."""


class VocabMismatchError(PlanError):
    """Embeddings of different vocabulary sizes, with no tokenizer setting to reconcile them."""


class TiedEmbeddingError(PlanError):
    pass


class GraftError(PlanError):
    pass


class GraftSignatureError(GraftError):
    """The donor's component and the place it goes to differ in tensors or shapes."""


class UnsupportedRecipeError(PlanError):
    pass


class UnaccountedTensorError(PlanError):
    """An input tensor the plan neither uses nor drops with a reason (a planner bug)."""
