"""DARE and DELLA: seeded, repeatable, independent of the order tensors are merged in, and pruning
as their definitions say (checked on the mask each run actually drew)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.assembly.engine.methods import derive_seed, get_method, tensor_generator

RANDOM = ["dare_linear", "dare_ties", "della", "della_linear"]
PER_MODEL = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.3}]


def _tensors(seed: int, shape: tuple[int, ...] = (8, 6)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g, dtype=torch.float64)
    return base, [base + 0.1 * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2)]


def test_tensor_generator_depends_on_seed_and_name_only() -> None:
    assert derive_seed(1, "a.weight") == derive_seed(1, "a.weight")
    assert derive_seed(1, "a.weight") != derive_seed(2, "a.weight")
    assert derive_seed(1, "a.weight") != derive_seed(1, "b.weight")
    assert 0 <= derive_seed(1, "a.weight") < 2**63
    first = torch.rand(5, generator=tensor_generator(1, "a.weight"))
    assert torch.equal(first, torch.rand(5, generator=tensor_generator(1, "a.weight")))


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_same_result_other_name_other_mask(name: str) -> None:
    method = get_method(name)
    base, models = _tensors(0)

    def run(seed: int, tensor: str) -> torch.Tensor:
        return method.merge(models, base, PER_MODEL, {}, generator=tensor_generator(seed, tensor))

    assert torch.equal(run(7, "layers.0.w"), run(7, "layers.0.w"))
    assert not torch.equal(run(7, "layers.0.w"), run(7, "layers.1.w"))
    assert not torch.equal(run(7, "layers.0.w"), run(8, "layers.0.w"))


@pytest.mark.parametrize("name", RANDOM)
def test_result_does_not_depend_on_processing_order(name: str) -> None:
    method = get_method(name)
    tensors = {f"layers.{i}.w": _tensors(i) for i in range(3)}

    def merge_all(order: list[str]) -> dict[str, torch.Tensor]:
        return {n: method.merge(tensors[n][1], tensors[n][0], PER_MODEL, {}, generator=tensor_generator(3, n))
                for n in order}

    forward = merge_all(sorted(tensors))
    backward = merge_all(sorted(tensors, reverse=True))
    assert all(torch.equal(forward[n], backward[n]) for n in tensors)


@pytest.mark.parametrize("name", RANDOM)
def test_density_one_prunes_nothing(name: str) -> None:
    base, models = _tensors(1)
    per_model = [{"weight": 0.6}, {"weight": 0.4}]
    generator = tensor_generator(0, "x")
    out = get_method(name).merge(models, base, per_model, {"normalize": False}, generator=generator)
    consensus = "ties" if name in {"dare_ties", "della"} else "task_arithmetic"
    expected = get_method(consensus).merge(models, base, per_model, {"normalize": False})
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def _kept(
    name: str, delta: torch.Tensor, density: float, rescale: bool, seed: int = 0, **extra: float
) -> np.ndarray:
    """One model, weight 1, on a zero base: the output is the pruned (and rescaled) delta."""
    per_model = [{"weight": 1.0, "density": density, **extra}]
    out = get_method(name).merge([delta], torch.zeros_like(delta), per_model, {"rescale": rescale},
                                 generator=tensor_generator(seed, "t"))
    return out.numpy()


def test_dare_keeps_entries_unchanged_at_the_density_rate() -> None:
    delta = torch.randn(64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = _kept("dare_linear", delta, 0.3, rescale=False)
    kept = out != 0
    # Kept entries are untouched, but for the trip through float32 that DARE takes on CPU (as mergekit).
    np.testing.assert_array_equal(out[kept], delta.float().double().numpy()[kept])
    assert abs(kept.mean() - 0.3) < 0.03  # 4096 Bernoulli(0.3) draws: sd 0.007


def test_dare_rescale_restores_the_l1_norm() -> None:
    delta = torch.randn(32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    out = _kept("dare_linear", delta, 0.4, rescale=True)
    kept = out != 0
    scale = np.abs(delta.numpy()).sum() / np.abs(delta.numpy()[kept]).sum()
    np.testing.assert_allclose(out[kept], delta.numpy()[kept] * scale, rtol=1e-6)  # float32 work dtype
    np.testing.assert_allclose(np.abs(out).sum(), np.abs(delta.numpy()).sum(), rtol=1e-6)


def test_della_keeps_large_magnitudes_more_often() -> None:
    """Keep probability runs from density - epsilon (smallest in its row) to density + epsilon."""
    rows = 256
    delta = torch.arange(1.0, 17.0, dtype=torch.float64).repeat(rows, 1)  # each row: magnitudes 1..16
    kept = np.stack([_kept("della_linear", delta, 0.5, rescale=False, seed=s, epsilon=0.3) != 0
                     for s in range(2)])
    rate = kept.mean(axis=(0, 1))  # per magnitude rank, over 512 rows
    expected = 0.2 + np.arange(16) / 15 * 0.6
    assert np.abs(rate - expected).max() < 0.1  # binomial sd at most 0.022
    assert rate[:4].mean() < rate[-4:].mean() - 0.3
    assert abs(kept.mean() - 0.5) < 0.02


def test_della_ranks_along_rows_and_rescales() -> None:
    delta = torch.randn(16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = _kept("della", delta, 0.5, rescale=True, epsilon=0.1)
    np.testing.assert_allclose(np.abs(out).sum(), np.abs(delta.numpy()).sum(), rtol=1e-6)


@pytest.mark.parametrize("shape", [(8, 1), (1,), (5,)])
def test_della_handles_rows_of_one_and_vectors(shape: tuple[int, ...]) -> None:
    """A one-entry row has no rank spread; mergekit fails there, we keep it with probability density."""
    delta = torch.ones(shape, dtype=torch.float64)
    out = _kept("della_linear", delta, 0.5, rescale=False)
    assert out.shape == shape and np.isin(out, [0.0, 1.0]).all()


def test_della_works_in_bfloat16() -> None:
    base, models = _tensors(2)
    out = get_method("della").merge([m.bfloat16() for m in models], base.bfloat16(), PER_MODEL, {},
                                    generator=tensor_generator(0, "w"))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_without_a_generator_torchs_global_one_is_used() -> None:
    base, models = _tensors(3)
    torch.manual_seed(11)
    first = get_method("dare_ties").merge(models, base, PER_MODEL, {})
    torch.manual_seed(11)
    assert torch.equal(first, get_method("dare_ties").merge(models, base, PER_MODEL, {}))
