"""Pruning of task vectors (a model minus the base) before they are combined, as mergekit 0.1.5
defines it: by magnitude (TIES), at random (DARE), by magnitude without the outliers
(Model Breadcrumbs) and at random with magnitude-ranked probabilities (DELLA's MAGPRUNE).

Each keeps a `density` share of the entries; with `rescale` the kept entries are scaled so the
L1 norm matches the unpruned vector's (mergekit's only rescale norm for these methods).
The torch calls (argsort/sort and their tie order, the work dtypes) are mergekit's, so the same
entries are kept.

Magnitudes are ranked the way mergekit ranks them (an argsort of float32 magnitudes on a CPU),
over the magnitudes' bit patterns as integers: for non-negative floats these order exactly as the
values do, so the same sort algorithm makes the same comparisons, ties included. On a CPU the
kept entries come from `sortselect`, which follows torch's sort only as far as the kept range's
boundaries need (O(n), the same entries); where it cannot answer, torch sorts the integer keys
(a self-check at first use falls back to float keys on a torch whose sort would tell the two
apart).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal

from . import sortselect

if TYPE_CHECKING:
    import torch

Pruning = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]

RESCALE_EPS = 1e-7  # below this L1 norm, rescaling would blow up noise: keep the plain mask


def masked(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, inplace: bool = False) -> torch.Tensor:
    """delta * mask (into `delta` itself with `inplace`), rescaled to the L1 norm it had."""
    before = delta.abs().sum() if rescale else None
    kept = delta.mul_(mask) if inplace else delta * mask
    if not rescale:
        return kept
    after = kept.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept.mul_(before / after) if inplace else kept * (before / after)


def _scores(delta: torch.Tensor) -> torch.Tensor:
    """Flat magnitudes to rank; on CPU in float32, as half types sort poorly (and as mergekit)."""
    scores = delta.abs().reshape(-1)
    return scores.float() if scores.device.type == "cpu" else scores


@functools.cache
def _integer_keys_sort_alike() -> bool:
    """Whether this torch's CPU argsort orders integer keys with the very permutation it gives
    the floats they stand for (ties included), on an input full of ties."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    for count in (7, 100, 5_000, 200_003):
        values = (torch.randn(count, generator=generator) * 0.01).to(torch.bfloat16).abs()
        values[::17] = 0
        keys = sortselect.integer_keys(values)
        floats = values.float()
        if keys is None or not torch.equal(torch.argsort(keys, descending=True),
                                           torch.argsort(floats, descending=True)):
            return False
        if not torch.equal(torch.argsort(sortselect.integer_keys(floats), descending=True),
                           torch.argsort(floats, descending=True)):
            return False
    return True


def largest_first(magnitudes: torch.Tensor) -> torch.Tensor:
    """Indices of the flat, non-negative `magnitudes` from largest to smallest, in the order
    mergekit's `argsort(magnitudes.float(), descending=True)` gives them."""
    import torch

    if magnitudes.device.type == "cpu":
        keys = sortselect.integer_keys(magnitudes) if _integer_keys_sort_alike() else None
        return torch.argsort(magnitudes.float() if keys is None else keys, descending=True)
    return torch.argsort(magnitudes, descending=True)


def _mask_work_dtype(delta: torch.Tensor) -> torch.dtype:
    import torch

    # torch.bernoulli lacks float16 on CPU; mergekit draws in float32 there (float64 too).
    if delta.device.type != "cpu" or delta.dtype == torch.bfloat16:
        return delta.dtype
    return torch.float32


def _ranked_mask(delta: torch.Tensor, lo: int, hi: int, descending: bool) -> torch.Tensor:
    """A flat mask in `delta`'s dtype, 1 at the entries that mergekit's argsort of `delta`'s
    magnitudes (descending, or ascending) puts at [lo, hi), 0 elsewhere."""
    import torch

    magnitudes = delta.abs().reshape(-1).contiguous()
    if magnitudes.device.type == "cpu" and sortselect.available():
        keys = sortselect.integer_keys(magnitudes)
        if keys is not None:
            keys = keys.numpy()
            if not descending:
                keys = sortselect.ascending_as_descending(keys)
            try:
                # The keys are the magnitudes' own memory (or a float32 copy): scratch from here.
                positions = sortselect.select_range(keys, lo, hi)
            except sortselect.SelectionUnavailable:
                magnitudes = delta.abs().reshape(-1)  # the selection left them out of order
            else:
                mask = magnitudes.zero_()  # the magnitudes' memory holds the mask
                bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[mask.element_size()]
                mask.view(bits).numpy()[positions] = torch.ones((), dtype=mask.dtype).view(bits).item()
                return mask
    order = largest_first(magnitudes) if descending else torch.sort(_scores(delta), descending=False).indices
    mask = magnitudes.zero_()
    mask.index_fill_(0, order[lo:hi], 1)  # as mask[order[lo:hi]] = 1, in about half the time
    return mask


def by_magnitude(delta: torch.Tensor, density: float, rescale: bool, inplace: bool = False) -> torch.Tensor:
    """Keep the `density` share of largest magnitudes, at least one entry. With `inplace` the
    result is written over `delta` (less memory; the same numbers)."""
    import torch

    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return delta.zero_() if inplace else torch.zeros_like(delta)
    keep = max(1, int(density * delta.numel()))
    mask = _ranked_mask(delta, 0, keep, descending=True)
    return masked(delta, mask.reshape_as(delta), rescale, inplace)


def by_magnitude_without_outliers(
    delta: torch.Tensor, density: float, gamma: float, rescale: bool
) -> torch.Tensor:
    """Drop the `gamma` share of largest magnitudes, then the smallest, to keep `density`.
    When density + gamma > 1 fewer outliers go: the density wins."""
    if density >= 1:
        return delta
    count = delta.numel()
    keep = int(density * count)
    outliers = int(gamma * count)
    smallest = max(0, count - keep - outliers)
    mask = _ranked_mask(delta, smallest, smallest + keep, descending=False)
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
    inplace: bool = False,
) -> torch.Tensor:
    """The pruned task vector; with `inplace` it may be written over `delta` (and returned)."""
    if kind == "magnitude":
        return by_magnitude(delta, density, rescale, inplace)
    if kind == "random":
        return at_random(delta, density, rescale, generator)
    if kind == "magnitude_outliers":
        return by_magnitude_without_outliers(delta, density, gamma, rescale)
    if kind == "della_magprune":
        return della_magprune(delta, density, epsilon, rescale, generator)
    raise ValueError(f"unknown pruning {kind!r}")
