"""The executor on a GPU: the same recipe on CUDA gives the CPU's model (to the dtype's rounding, and
exactly where the arithmetic is exact), every method runs there, and the random methods repeat
themselves. Skipped where torch sees no CUDA device."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from apps.assembly.engine.executor import execute
from apps.assembly.engine.methods import get_method
from apps.assembly.engine.methods.registry import METHOD_NAMES
from apps.assembly.engine.methods.spec import tensor_generator
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
from apps.registry.engine.demo_models import make_llama_family
from tests.assembly.test_executor import LINEAR  # the same recipe the CPU tests run

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("demo") / "family")


def _run(recipe: str, family, dest, device: str):
    paths = {"base": family["base"], "even": family["tune-even"], "late": family["tune-late"]}
    plan = make_plan(parse_recipe(recipe), lambda ref: paths[ref])
    result = execute(plan, dest, recipe_text=recipe, device=device)
    assert result.device == device
    return load_file(str(dest / "model.safetensors"))


DARE = """
merge_method: dare_ties
base_model: base
models:
  - model: even
    parameters: {weight: 0.5, density: 0.6}
  - model: late
    parameters: {weight: 0.5, density: 0.6}
dtype: float32
random_seed: 7
"""


def test_linear_on_cuda_is_the_cpu_model(family, tmp_path):
    gpu = _run(LINEAR, family, tmp_path / "gpu", "cuda")
    cpu = _run(LINEAR, family, tmp_path / "cpu", "cpu")
    assert gpu.keys() == cpu.keys()
    for name in cpu:
        torch.testing.assert_close(gpu[name], cpu[name], rtol=2e-7, atol=1e-7)


def test_the_default_device_is_cuda_when_present(family, tmp_path):
    paths = {"even": family["tune-even"], "late": family["tune-late"]}
    result = execute(make_plan(parse_recipe(LINEAR), lambda ref: paths[ref]), tmp_path / "out")
    assert result.device == "cuda"


def test_a_random_method_on_cuda_repeats_itself(family, tmp_path):
    first = _run(DARE, family, tmp_path / "one", "cuda")
    again = _run(DARE, family, tmp_path / "two", "cuda")
    assert all(torch.equal(first[n], again[n]) for n in first)
    base = load_file(str(family["base"] / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.equal(first[name], base[name])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_runs_on_cuda_and_agrees_with_the_cpu(name):
    method = get_method(name)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=g)
    count = max(method.min_models, min(2, method.max_models or 2))
    models = [base + 0.05 * torch.randn(64, 48, generator=g) for _ in range(count)]
    known = set(method.tensor_params)
    per_model = [{k: v for k, v in {"weight": 0.5 if name == "nuslerp" else 0.6 - 0.2 * i,
                                    "density": 0.7}.items() if k in known} for i in range(count)]
    params = {"t": 0.3} if "t" in method.global_params else {}
    use_base = method.base_policy == "required"

    def merge(device):
        gen = None if method.deterministic else tensor_generator(5, "t", device=device)
        return method.merge([m.to(device) for m in models], base.to(device) if use_base else None,
                            per_model, params, generator=gen)

    out = merge("cuda")
    assert out.is_cuda and out.shape == base.shape and torch.isfinite(out).all()
    if method.deterministic:
        torch.testing.assert_close(out.cpu(), merge("cpu"), rtol=1e-4, atol=1e-5)
    else:
        assert torch.equal(out, merge("cuda"))


def test_lora_extraction_on_cuda_matches_the_cpu(family, tmp_path):
    from apps.assembly.engine.lora_extract import extract_lora

    gpu = extract_lora(family["base"], family["tune-late"], tmp_path / "gpu", energy=0.9, device="cuda")
    cpu = extract_lora(family["base"], family["tune-late"], tmp_path / "cpu", energy=0.9, device="cpu")
    assert [(m.module, m.rank) for m in gpu] == [(m.module, m.rank) for m in cpu]
    for g, c in zip(gpu, cpu, strict=True):
        assert abs(g.rel_error - c.rel_error) < 1e-4
    a = load_file(str(tmp_path / "gpu" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cpu" / "adapter_model.safetensors"))
    for key in a:
        if key.endswith("lora_B.weight"):
            stem = key.removesuffix("lora_B.weight")
            # singular vectors may flip sign between the two: compare the product B·A
            torch.testing.assert_close(a[key] @ a[stem + "lora_A.weight"], b[key] @ b[stem + "lora_A.weight"],
                                       rtol=1e-3, atol=1e-4)
