"""Pruning of task vectors (a model minus the base) before they are combined, as mergekit 0.1.5
defines it: by magnitude (TIES), at random (DARE), by magnitude without the outliers
(Model Breadcrumbs) and at random with magnitude-ranked probabilities (DELLA's MAGPRUNE).

Each keeps a `density` share of the entries; with `rescale` the kept entries are scaled so the
L1 norm matches the unpruned vector's (mergekit's only rescale norm for these methods).
The torch calls (argsort/sort and their tie order, the work dtypes) are mergekit's, so the same
entries are kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Pruning = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]

RESCALE_EPS = 1e-7  # below this L1 norm, rescaling would blow up noise: keep the plain mask


def masked(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    kept = delta * mask
    if not rescale:
        return kept
    before = delta.abs().sum()
    after = kept.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept * (before / after)


def _scores(delta: torch.Tensor) -> torch.Tensor:
    """Flat magnitudes to rank; on CPU in float32, as half types sort poorly (and as mergekit)."""
    scores = delta.abs().reshape(-1)
    return scores.float() if scores.device.type == "cpu" else scores


def _mask_work_dtype(delta: torch.Tensor) -> torch.dtype:
    import torch

    # torch.bernoulli lacks float16 on CPU; mergekit draws in float32 there (float64 too).
    if delta.device.type != "cpu" or delta.dtype == torch.bfloat16:
        return delta.dtype
    return torch.float32


def by_magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the `density` share of largest magnitudes, at least one entry."""
    import torch

    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    keep = max(1, int(density * delta.numel()))
    largest_first = torch.argsort(_scores(delta), descending=True)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[largest_first[:keep]] = 1
    return masked(delta, mask.reshape_as(delta), rescale)


def by_magnitude_without_outliers(
    delta: torch.Tensor, density: float, gamma: float, rescale: bool
) -> torch.Tensor:
    """Drop the `gamma` share of largest magnitudes, then the smallest, to keep `density`.
    When density + gamma > 1 fewer outliers go: the density wins."""
    import torch

    if density >= 1:
        return delta
    count = delta.numel()
    keep = int(density * count)
    outliers = int(gamma * count)
    smallest = max(0, count - keep - outliers)
    smallest_first = torch.sort(_scores(delta), descending=False).indices
    mask = torch.zeros(count, dtype=delta.dtype, device=delta.device)
    mask[smallest_first[smallest : smallest + keep]] = 1
    return masked(delta, mask.reshape_as(delta), rescale)


def at_random(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE: keep each entry with probability `density`."""
    import torch

    if density >= 1:
        return delta
    work = _mask_work_dtype(delta)
    keep_probability = torch.full_like(delta, density, dtype=work)
    mask = torch.bernoulli(keep_probability, generator=generator)
    return masked(delta.to(work), mask, rescale).to(delta.dtype)


def della_magprune(
    delta: torch.Tensor, density: float, epsilon: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DELLA: keep each entry at random with a probability from density - epsilon (smallest
    magnitude of its row) to density + epsilon (largest), linear in its rank along dim 1."""
    import torch

    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("della: density ± epsilon must stay inside (0, 1)")
    shape = delta.shape
    work = _mask_work_dtype(delta)
    rows = delta if delta.dim() >= 2 else delta.reshape(1, -1)  # mergekit ranks along dim 1
    rank = torch.argsort(torch.argsort(rows.abs(), dim=1, descending=False), dim=1).to(work) + 1
    lowest = rank.min(dim=1, keepdim=True).values
    highest = rank.max(dim=1, keepdim=True).values
    spread = highest - lowest
    position = ((rank - lowest) / spread).clamp(0, 1)
    # A one-entry row has no spread (0/0): mergekit fails there on a NaN probability; we keep
    # such an entry with probability `density`, the middle of the range.
    position = torch.where(spread > 0, position, 0.5)
    probability = (density - epsilon) + position * 2 * epsilon
    mask = torch.bernoulli(probability, generator=generator).to(work)
    return masked(rows.to(work), mask, rescale).to(delta.dtype).reshape(shape)


def prune(
    kind: Pruning,
    delta: torch.Tensor,
    *,
    density: float,
    rescale: bool,
    gamma: float = 0.0,
    epsilon: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    if kind == "magnitude":
        return by_magnitude(delta, density, rescale)
    if kind == "random":
        return at_random(delta, density, rescale, generator)
    if kind == "magnitude_outliers":
        return by_magnitude_without_outliers(delta, density, gamma, rescale)
    if kind == "della_magprune":
        return della_magprune(delta, density, epsilon, rescale, generator)
    raise ValueError(f"unknown pruning {kind!r}")
