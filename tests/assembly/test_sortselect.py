"""The exact selection that replaces the full sort in magnitude pruning: the same entries as
torch's CPU argsort of float32 magnitudes (mergekit's call), ties included, for every dtype,
size and range; and pruning that still matches where the selection cannot answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.assembly.engine.methods import sortselect
from apps.assembly.engine.methods.sparsify import by_magnitude, by_magnitude_without_outliers


def test_the_selection_runs_here():
    """numba is a dependency and this torch sorts with libstdc++'s introsort: without this,
    every merge below would quietly fall back to sorting."""
    assert sortselect.available()


def _tied(count: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Small values in a low-precision type: thousands of exact ties, as real task vectors have."""
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(count, generator=g) * 0.003).to(dtype)
    values[::13] = 0
    return values


def _mask(positions, count: int) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    mask[np.asarray(positions)] = True
    return mask


def _keys(magnitudes: torch.Tensor) -> np.ndarray:
    return sortselect.integer_keys(magnitudes.clone()).numpy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("count", [1, 2, 16, 17, 33, 4_097, 300_001])
def test_the_largest_are_the_entries_torchs_argsort_puts_first(dtype, count):
    magnitudes = _tied(count, dtype, seed=count).abs()
    order = torch.argsort(magnitudes.float(), descending=True)
    for share in (0.01, 0.3, 0.5, 0.77, 1.0):
        keep = max(1, int(share * count))
        got = sortselect.select_range(_keys(magnitudes), 0, keep)
        assert len(got) == keep
        assert (_mask(got, count) == _mask(order[:keep], count)).all(), (share, keep)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("count", [50, 20_011, 1_000_003])
def test_a_middle_range_of_the_ascending_sort(dtype, count):
    """Model Breadcrumbs keeps [smallest, smallest + keep) of an ascending sort: two boundaries."""
    magnitudes = _tied(count, dtype, seed=3).abs()
    order = torch.sort(magnitudes.float(), descending=False).indices
    for lo, hi in [(0, count // 2), (count // 5, count - count // 100), (count // 3, count), (7, 9)]:
        keys = sortselect.ascending_as_descending(_keys(magnitudes))
        got = sortselect.select_range(keys, lo, hi)
        assert (_mask(got, count) == _mask(order[lo:hi], count)).all(), (lo, hi)


def test_an_empty_range_and_bad_keys():
    keys = np.arange(10, dtype=np.int16)
    assert len(sortselect.select_range(keys.copy(), 4, 4)) == 0
    with pytest.raises(sortselect.SelectionUnavailable):
        sortselect.select_range(np.arange(10, dtype=np.float32), 0, 3)
    with pytest.raises(sortselect.SelectionUnavailable):
        sortselect.select_range(np.arange(20, dtype=np.int16)[::2], 0, 3)


def test_no_keys_for_a_nan():
    magnitudes = _tied(1000, torch.bfloat16, seed=1).abs()
    magnitudes[17] = float("nan")
    assert sortselect.integer_keys(magnitudes) is None


def _adversary(count: int) -> np.ndarray:
    """Ranks that drive libstdc++'s introsort into its depth limit (McIlroy's adversary: values
    are fixed only as the sort compares them, always against it), following the larger side."""
    gas = count
    rank = [gas] * count
    solid = 0
    candidate = -1

    def before(x, y):
        nonlocal solid, candidate
        if rank[x] == gas and rank[y] == gas:
            z = x if x == candidate else y
            rank[z] = solid
            solid += 1
        if rank[x] == gas:
            candidate = x
        elif rank[y] == gas:
            candidate = y
        return rank[x] < rank[y]

    a = list(range(count))
    first, last = 0, count
    while last - first > 16:
        x, y, z = first + 1, first + (last - first) // 2, last - 1
        if before(a[x], a[y]):
            pick = y if before(a[y], a[z]) else (z if before(a[x], a[z]) else x)
        elif before(a[x], a[z]):
            pick = x
        else:
            pick = z if before(a[y], a[z]) else y
        a[first], a[pick] = a[pick], a[first]
        f, b = first + 1, last
        while True:
            while before(a[f], a[first]):
                f += 1
            b -= 1
            while before(a[first], a[b]):
                b -= 1
            if not f < b:
                break
            a[f], a[b] = a[b], a[f]
            f += 1
        first, last = (first, f) if f - first > last - f else (f, last)
    for i in range(count):
        if rank[i] == gas:
            rank[i] = solid
            solid += 1
    return np.array(rank)


def test_a_hostile_order_that_would_heapsort_is_pruned_by_sorting():
    count = 3000
    rank = _adversary(count)
    # Distinct positive bf16 magnitudes, largest where the adversary wants the sort to put first.
    bits = torch.from_numpy((1000 + count - rank).astype(np.int16))
    delta = bits.view(torch.bfloat16) * torch.where(torch.arange(count) % 2 == 0, 1, -1).to(torch.bfloat16)
    with pytest.raises(sortselect.SelectionUnavailable, match="heapsort"):
        sortselect.select_range(_keys(delta.abs()), 0, count // 2)
    expected = torch.zeros_like(delta)
    expected[torch.argsort(delta.abs().float(), descending=True)[: count // 2]] = 1
    assert torch.equal(by_magnitude(delta.clone(), 0.5, rescale=False), delta * expected)


def _mergekit_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit 0.1.5's sparsify.magnitude without rescaling, written out."""
    keep = int(density * delta.numel())
    mask = torch.zeros_like(delta)
    mask.view(-1)[torch.argsort(delta.abs().view(-1).float(), descending=True)[:keep]] = 1
    return delta * mask


def _mergekit_breadcrumbs(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    count = delta.numel()
    keep, outliers = int(density * count), int(gamma * count)
    smallest = max(0, count - keep - outliers)
    order = torch.sort(delta.abs().view(-1).float(), descending=False).indices
    mask = torch.zeros_like(delta)
    mask.view(-1)[order[smallest: smallest + keep]] = 1
    return delta * mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("selection", [True, False])
def test_pruning_with_and_without_the_selection_is_mergekits(dtype, selection, monkeypatch):
    calls = []
    if selection:
        select_range = sortselect.select_range
        monkeypatch.setattr(sortselect, "select_range", lambda *a: calls.append(1) or select_range(*a))
    else:
        monkeypatch.setattr(sortselect, "available", lambda: False)
    delta = _tied(257 * 311, dtype, seed=11).reshape(257, 311)
    for density in (0.1, 0.5, 0.9):
        got = by_magnitude(delta.clone(), density, rescale=False)
        assert torch.equal(got, _mergekit_magnitude(delta, density))
        got = by_magnitude_without_outliers(delta.clone(), density, 0.05, rescale=False)
        assert torch.equal(got, _mergekit_breadcrumbs(delta, density, 0.05))
    assert len(calls) == (6 if selection else 0)
