"""The merge methods' registry, parameter validation and tensor checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apps.assembly.engine.methods import (
    METHOD_NAMES,
    MergeMethod,
    MethodInputError,
    MethodParamError,
    UnknownMethodError,
    get_method,
    registry,
)

ROOT = Path(__file__).resolve().parents[2]
RANDOM = {"dare_linear", "dare_ties", "della", "della_linear"}
NEEDS_BASE = {"slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
              "breadcrumbs_ties", "della", "della_linear", "model_stock"}


def test_names_are_mergekits_plus_graft() -> None:
    assert set(METHOD_NAMES) == {
        "linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
        "breadcrumbs_ties", "della", "della_linear", "model_stock", "passthrough", "graft"}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_loads_by_name_and_fits_the_protocol(name: str) -> None:
    method = get_method(name)
    assert isinstance(method, MergeMethod)
    assert method.name == name
    assert get_method(name) is method
    assert method.deterministic == (name not in RANDOM)
    assert method.needs_base == (name in NEEDS_BASE)
    assert not set(method.tensor_params) & set(method.global_params)


def test_defaults_are_mergekits() -> None:
    def defaults(name: str) -> dict[str, object]:
        return {p.name: p.default for p in get_method(name).params if not p.required}  # type: ignore[attr-defined]

    assert defaults("ties") == {"int8_mask": False, "normalize": True, "rescale": False, "lambda": 1.0,
                                "density": 1.0}
    assert defaults("dare_linear") == {"int8_mask": False, "normalize": False, "rescale": True, "lambda": 1.0,
                                       "density": 1.0}
    assert defaults("breadcrumbs")["gamma"] == 0.01
    assert defaults("della") == {"int8_mask": False, "normalize": True, "rescale": True, "lambda": 1.0,
                                 "density": 1.0, "epsilon": 0.15}
    assert defaults("della_linear")["normalize"] is False
    assert defaults("linear") == {"normalize": True}
    assert defaults("nuslerp") == {"nuslerp_row_wise": False, "nuslerp_flatten": True}
    assert defaults("model_stock") == {"filter_wise": False}
    assert get_method("slerp").global_params == ("t",)


def test_package_import_does_not_import_torch_or_any_method() -> None:
    code = ("import sys; import apps.assembly.engine; "
            "from apps.assembly.engine.methods import METHOD_NAMES, get_method; "
            "from apps.assembly.engine.methods import registry; assert len(METHOD_NAMES) == 14; "
            "heavy = ('torch', 'django', 'apps.assembly.engine.methods.ties'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_method_loads_and_validates_without_torch() -> None:
    """The planner (web process) takes parameter tables and checks from the methods themselves:
    `get_method` and `resolve` must not import torch, only `merge` does."""
    code = ("import sys; from apps.assembly.engine.methods import METHOD_NAMES, get_method; "
            "methods = [get_method(n) for n in METHOD_NAMES]; "
            "get_method('ties').resolve({}, [{'weight': 1.0, 'density': 0.5}]); "
            "get_method('linear').resolve({}, [{'weight': 1.0}]); "
            "print(len(methods), sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "14 []"

def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(UnknownMethodError, match=r"unknown merge method 'tie'; known methods: linear, slerp"):
        get_method("tie")


def test_register_refuses_a_name_missing_from_the_table() -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="not listed"):
        registry.register(replace(get_method("linear"), name="linear2"))  # type: ignore[type-var]


# ---------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(("method", "global_params", "per_model", "message"), [
    ("ties", {}, [{"weight": 1.0, "density": 1.5}],
     r"^ties: density must be in \(0, 1\], got 1\.5 for model index 0$"),
    ("ties", {}, [{"weight": 1.0}, {"weight": 1.0, "density": 0}],
     r"^ties: density must be in \(0, 1\], got 0 for model index 1$"),
    ("ties", {}, [{"weight": 1.0}, {"density": 0.5}], r"^ties: weight is required for model index 1$"),
    ("ties", {"densty": 0.5}, [{"weight": 1.0}],
     r"^ties: unknown parameter 'densty'; known parameters: method-wide: int8_mask, lambda, normalize, "
     r"rescale; per-model: density, weight$"),
    ("ties", {}, [{"weight": 1.0, "gamma": 0.1}], r"unknown parameter 'gamma' for model index 0"),
    ("ties", {"density": 0.5}, [{"weight": 1.0}],
     r"^ties: density is a per-model parameter: set it for each model$"),
    ("ties", {}, [{"weight": 1.0, "normalize": True}], r"^ties: normalize is a method-wide parameter"),
    ("ties", {"normalize": "yes"}, [{"weight": 1.0}], r"^ties: normalize must be true or false, got 'yes'$"),
    ("task_arithmetic", {}, [{"weight": float("nan")}], r"weight must be finite, got nan"),
    ("task_arithmetic", {}, [{"weight": True}], r"weight must be a number, got True"),
    ("task_arithmetic", {"lambda": "2"}, [{"weight": 1.0}], r"lambda must be a number, got '2'"),
    ("breadcrumbs", {}, [{"weight": 1.0, "gamma": -0.1}], r"gamma must be in \[0, 1\], got -0\.1"),
    ("della", {}, [{"weight": 1.0, "density": 0.9}],
     r"^della: density ± epsilon must stay inside \(0, 1\), got density=0\.9, epsilon=0\.15 "
     r"for model index 0$"),
    ("della_linear", {}, [{"weight": 1.0, "density": 0.5, "epsilon": -0.1}],
     r"epsilon must be in \[0, inf\), got -0\.1"),
    ("slerp", {}, [{}], r"^slerp: t is required$"),
    ("slerp", {"t": 0.5}, [{}, {}], r"^slerp: needs exactly 1 model besides the base, got 2$"),
    ("model_stock", {}, [{}], r"^model_stock: needs at least 2 models besides the base, got 1$"),
    ("nuslerp", {}, [{"weight": 1.0}], r"^nuslerp: needs exactly 2 models besides the base, got 1$"),
    ("linear", {}, [], r"^linear: needs at least 1 model, got 0$"),
    ("linear", {}, [{"weight": 1.0}, {"weight": -1.0}], r"^linear: the weights sum to 0"),
    ("passthrough", {}, [{}, {}], r"^passthrough: needs exactly 1 model, got 2$"),
    ("graft", {}, [{"weight": 1.0}],
     r"^graft: unknown parameter 'weight' for model index 0; known parameters: method-wide: none; per-model: "
     r"none$"),
])
def test_validation_names_method_and_parameter(method: str, global_params: dict, per_model: list,
                                               message: str) -> None:
    with pytest.raises(MethodParamError, match=message):
        get_method(method).validate(global_params, per_model)


def test_valid_parameters_pass_and_ints_count_as_floats() -> None:
    get_method("ties").validate({"lambda": 2, "normalize": False}, [{"weight": 1, "density": 1}])
    get_method("linear").validate({"normalize": False}, [{"weight": 1.0}, {"weight": -1.0}])
    get_method("passthrough").validate({}, [{"scale": None}])
    # density 1 prunes nothing, so epsilon has no bound then
    get_method("della").validate({}, [{"weight": 1.0, "density": 1.0, "epsilon": 0.5}])


def test_parameter_containers_are_checked() -> None:
    with pytest.raises(MethodParamError, match="per-model parameters must be a list"):
        get_method("ties").validate({}, {"weight": 1.0})  # type: ignore[arg-type]
    with pytest.raises(MethodParamError, match="parameters for model index 0 must be a mapping"):
        get_method("ties").validate({}, [1.0])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------- tensors


def test_tensor_checks() -> None:
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    ties, linear = get_method("ties"), get_method("linear")
    with pytest.raises(MethodInputError, match="ties: needs the base model's tensor"):
        ties.merge([a], None, [{"weight": 1.0}], {})
    with pytest.raises(MethodInputError, match="linear: takes no base tensor"):
        linear.merge([a], b, [{"weight": 1.0}], {})
    shapes = r"ties: shapes differ: models \[\(2, 3\), \(3, 2\)\], base \(2, 3\)"
    with pytest.raises(MethodInputError, match=shapes):
        ties.merge([a, b.T], b, [{"weight": 1.0}, {"weight": 1.0}], {})
    with pytest.raises(MethodInputError, match="got 2 tensor"):
        linear.merge([a, b], None, [{"weight": 1.0}], {})
    with pytest.raises(MethodInputError, match="floating-point"):
        ties.merge([a.long()], b.long(), [{"weight": 1.0}], {})


def test_inputs_are_promoted_like_mergekit() -> None:
    base = torch.zeros(4, dtype=torch.bfloat16)
    model = torch.full((4,), 1 / 3, dtype=torch.float32)
    out = get_method("task_arithmetic").merge([model], base, [{"weight": 1.0}], {})
    assert out.dtype == torch.float32
    assert torch.equal(out, model)
