"""The plan of a merge, made from a recipe and the models' headers only (no tensor data, no
torch): which output tensor comes from which input tensors, with the method and the
parameters resolved for that tensor, and what happens to every input tensor not used.

The layout follows mergekit's planner:
- `models:` becomes one slice holding every model's full layer range (the base appended
  when it is not listed and the method takes a base);
- slice by slice, output layer i is built from layer `start + i` of each source, with
  t = i / (n - 1) over the slice's n layers (t = 1 for a one-layer slice) for gradients;
- tensors before the blocks (the embedding) come from the first slice's sources, every
  other tensor outside the main block stack (final norm, head, vision tower...) from the
  last slice's sources; both at t = 0, where mergekit 0.1.5 evaluates them (its planner
  reads them with the module's reader, whose t is 0), so a gradient gives them its first
  value whichever end of the stack they sit at;
- method-wide parameters are looked up with the output tensor's name, per-model ones with
  that model's input tensor name (what a `filter:` is matched against);
- output names, dtypes and config.json follow the base model where it takes part, else the
  first model; a tensor is written in out_dtype, else dtype, else that model's own dtype.

Where mergekit would fail late or silently do something else, the plan stops with a
PlanError instead: a method that ignores the base (linear, passthrough) does not get the
base appended (mergekit appends it, then crashes on its missing weight); a model listed twice
in one slice is refused (mergekit keys a slice's inputs by model and keeps one); embeddings of
different vocabulary sizes need a tokenizer setting (mergekit truncates them); a method-wide
parameter set for one model is refused (mergekit ignores it).

Every input tensor of every model that takes part ends up either as a source of some output
tensor or in `dropped` with the reason (a layer outside every slice, another slice's
embedding under passthrough, a head the output ties to its embedding, a component replaced
by a graft...). A tensor with neither is an error, never silently lost.

The estimate is deliberately simple and says what it assumes (`Estimate.assumptions`); its
formulas are in planning/estimate.py.

The work is done in stages, one module each under planning/ (see its __init__): parameters,
inputs and adapters, slices and layers, vocabulary, config, grafts, estimate; they share one
`PlanContext`. This module runs them in order and is the public entry point: import the plan's
types and errors from here.
"""

from __future__ import annotations

from .planning.config import LAYER_COUNT_KEYS, output_config
from .planning.context import PlanContext, Resolver
from .planning.errors import (
    AdapterError,
    BaseModelRequiredError,
    GraftError,
    GraftSignatureError,
    LayerRangeError,
    MisplacedParameterError,
    MissingParameterError,
    ModelNotFoundError,
    ModelReadError,
    ParameterError,
    ParameterValueError,
    PlanError,
    ShapeMismatchError,
    SourceCountError,
    TiedEmbeddingError,
    UnaccountedTensorError,
    UnknownMethodError,
    UnknownParameterError,
    UnsupportedRecipeError,
    VocabMismatchError,
)
from .planning.estimate import (
    COST_NS,
    MEMORY_FACTOR,
    READ_BYTES_PER_S,
    VALIDATION_FLOPS,
    VALIDATION_TEXTS,
    VALIDATION_TOKENS,
    WRITE_BUFFER_BYTES,
    WRITE_BYTES_PER_S,
    account,
    estimate_plan,
)
from .planning.grafts import apply_grafts
from .planning.inputs import load_models, model_input
from .planning.layers import assign_dtypes, check_shapes, make_slices, plan_tensors, template_model
from .planning.parameters import (
    MERGEKIT_ONLY,
    check_base_given,
    check_parameters,
    find_method,
    resolve_params,
)
from .planning.result import DroppedTensor, Estimate, ModelInput, OutputTensor, Plan, SourceTensor
from .planning.vocabulary import output_tied, plan_vocabulary
from .recipe import Recipe

__all__ = [
    "COST_NS", "LAYER_COUNT_KEYS", "MEMORY_FACTOR", "MERGEKIT_ONLY", "READ_BYTES_PER_S",
    "VALIDATION_FLOPS", "VALIDATION_TEXTS", "VALIDATION_TOKENS", "WRITE_BUFFER_BYTES",
    "WRITE_BYTES_PER_S", "AdapterError", "BaseModelRequiredError", "DroppedTensor", "Estimate",
    "GraftError", "GraftSignatureError", "LayerRangeError", "MisplacedParameterError",
    "MissingParameterError", "ModelInput", "ModelNotFoundError", "ModelReadError", "OutputTensor",
    "ParameterError", "ParameterValueError", "Plan", "PlanError", "Resolver", "ShapeMismatchError",
    "SourceCountError", "SourceTensor", "TiedEmbeddingError", "UnaccountedTensorError",
    "UnknownMethodError", "UnknownParameterError", "UnsupportedRecipeError", "VocabMismatchError",
    "make_plan",
]


def make_plan(recipe: Recipe, resolve: Resolver) -> Plan:
    """Plan `recipe`. `resolve` maps a model reference (`org/name@rev`, `asset:NAME@VERSION`, a
    path; for `model+lora`, each part on its own) to a model folder, raising LookupError for
    an unknown one. The merge method's parameter table and checks are the method registry's own
    (`get_method` imports no torch)."""
    if recipe.modules:
        raise UnsupportedRecipeError(
            f"'modules' ({', '.join(recipe.modules)}) is not supported by the planner yet; "
            "write the recipe with 'models' or 'slices'")
    # Parameters, before any model is read.
    ctx = PlanContext(recipe, resolve, find_method(recipe.merge_method))
    check_parameters(ctx)
    check_base_given(ctx)
    # Inputs and adapters.
    load_models(ctx)
    # Slices and layers.
    ctx.slices = make_slices(ctx)
    ctx.template = template_model(ctx)
    ctx.out_tied = output_tied(ctx)
    plan_tensors(ctx)
    check_shapes(ctx)
    # Vocabulary, then each output tensor's parameters and dtype, and the output config.
    tokenizer, vocab = plan_vocabulary(ctx)
    for out in ctx.outputs:
        resolve_params(ctx, out)
    assign_dtypes(ctx)
    config = output_config(ctx, vocab)
    # Grafts, the accounting of every input tensor, and the estimate.
    apply_grafts(ctx, config)
    account(ctx)
    estimate = estimate_plan(ctx, tokenizer, config)
    return Plan(
        recipe=recipe, method=ctx.method.name, deterministic=bool(ctx.method.deterministic),
        base_model=str(recipe.base_model) if recipe.base_model else None,
        models=[model_input(m) for m in ctx.models.values()],
        outputs=ctx.outputs,
        dropped=[DroppedTensor(model, tensor, reason) for (model, tensor), reason in ctx.drops.items()
                 if (model, tensor) not in ctx.used],
        layer_map=ctx.layer_map, config=config, tokenizer=tokenizer, vocab=vocab, grafts=ctx.grafts,
        estimate=estimate, warnings=ctx.warnings,
    )
