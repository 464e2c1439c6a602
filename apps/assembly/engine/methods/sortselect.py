"""Which entries torch's CPU sort puts in a range of positions, without sorting them all.

TIES and Model Breadcrumbs keep the entries that mergekit's `torch.argsort` puts first (or in
a middle range). With bf16 task vectors thousands of entries share each magnitude, so *which*
of the tied entries are kept is decided by the sort's algorithm: torch's CPU sort is
libstdc++'s `std::sort` (introsort) over (key, index) pairs, which is not stable. To keep
exactly mergekit's entries, this module runs that very algorithm (median-of-three pivot,
Hoare partition, 16-element insertion-sort threshold, depth limit 2*floor(log2 n)), but only
into the partitions that hold a boundary of the wanted range: partitions wholly inside or
outside the range do not change which entries it holds. That is a quickselect, O(n) instead
of O(n log n), with the same answer as the full sort, ties included.

The loop is compiled by numba (cached on disk, released from the GIL so models select side by
side). Callers use torch's sort itself (the same entries, only slower) where numba is missing,
where the self-check at first use finds a torch whose sort differs (a build that sorts with
x86-simd-sort, say), and where the introsort would switch to heapsort (its depth limit, which a
hostile input can force).

Keys are integers that order as the magnitudes do (the bit patterns of non-negative floats);
the selection reorders them in place, with an int32 position array beside them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

THRESHOLD = 16  # libstdc++'s _S_threshold: ranges this small are left to the insertion sort
MAX_ENTRIES = 2**31 - 1  # positions are int32


class SelectionUnavailable(Exception):
    """The exact selection cannot answer here: the caller sorts instead."""


@functools.cache
def _kernel():
    import numpy as np

    try:
        import numba
    except ImportError as exc:
        raise SelectionUnavailable(f"numba is not installed ({exc})") from None

    @numba.njit(cache=True, nogil=True)
    def select(key, pos, lo, hi):  # pragma: no cover - compiled; covered through `select_range`
        """Arrange (key, pos) as std::sort(descending) would, as far as needed for positions
        [lo, hi) to hold the entries it puts there. Returns 0, or -1 where the sort would
        switch to heapsort (the caller then sorts)."""
        n = key.size
        depth = 0
        m = n
        while m > 1:
            m >>= 1
            depth += 1
        # Ranges that still hold a boundary strictly inside. A range splits in two only where
        # each side holds one of the two boundaries, so the stack never holds more than one.
        stack = np.empty((4, 3), dtype=np.int64)
        stack[0, 0] = 0
        stack[0, 1] = n
        stack[0, 2] = 2 * depth
        top = 1
        while top > 0:
            top -= 1
            f = stack[top, 0]
            last = stack[top, 1]
            d = stack[top, 2]
            while last - f > THRESHOLD:
                if d == 0:
                    return -1
                d -= 1
                # std::__move_median_to_first(first, first + 1, mid, last - 1)
                x = f + 1
                y = f + (last - f) // 2
                z = last - 1
                kx = key[x]
                ky = key[y]
                kz = key[z]
                if kx > ky:
                    if ky > kz:
                        r = y
                    elif kx > kz:
                        r = z
                    else:
                        r = x
                elif kx > kz:
                    r = x
                elif ky > kz:
                    r = z
                else:
                    r = y
                key[f], key[r] = key[r], key[f]
                pos[f], pos[r] = pos[r], pos[f]
                # std::__unguarded_partition(first + 1, last, first)
                p = key[f]
                a = f + 1
                b = last
                while True:
                    while key[a] > p:
                        a += 1
                    b -= 1
                    while p > key[b]:
                        b -= 1
                    if not a < b:
                        break
                    key[a], key[b] = key[b], key[a]
                    pos[a], pos[b] = pos[b], pos[a]
                    a += 1
                cut = a
                left = f < lo < cut or f < hi < cut
                right = cut < lo < last or cut < hi < last
                if left and right:
                    stack[top, 0] = cut
                    stack[top, 1] = last
                    stack[top, 2] = d
                    top += 1
                    last = cut
                elif left:
                    last = cut
                elif right:
                    f = cut
                else:
                    last = f  # nothing left to decide here
            # The final insertion sort: stable, and it never moves an entry across a partition.
            for i in range(f + 1, last):
                kv = key[i]
                pv = pos[i]
                j = i
                while j > f and kv > key[j - 1]:
                    key[j] = key[j - 1]
                    pos[j] = pos[j - 1]
                    j -= 1
                key[j] = kv
                pos[j] = pv
        return 0

    return select


def select_range(keys: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The positions of the entries that a descending torch CPU argsort of `keys` puts at
    [lo, hi), in no useful order. `keys` (a 1-D int16 or int32 array, no two entries comparing
    differently than the values they stand for) is used as scratch: its order is lost.
    Raises SelectionUnavailable where only sorting can answer."""
    import numpy as np

    n = keys.size
    if n > MAX_ENTRIES:
        raise SelectionUnavailable(f"{n} entries exceed int32 positions")
    if keys.dtype not in (np.int16, np.int32) or keys.ndim != 1 or not keys.flags.c_contiguous:
        raise SelectionUnavailable(f"keys of {keys.dtype} and shape {keys.shape}")
    lo, hi = max(0, lo), min(n, hi)
    pos = np.arange(n, dtype=np.int32)
    if lo >= hi:
        return pos[:0]
    if _kernel()(keys, pos, lo, hi) != 0:
        raise SelectionUnavailable("the sort would switch to heapsort on this input")
    return pos[lo:hi]


def integer_keys(magnitudes: torch.Tensor) -> torch.Tensor | None:
    """Integer keys over flat, non-negative magnitudes that order exactly as their float32
    values do (mergekit ranks in float32): a view of their bits where the type allows, so the
    same sort algorithm makes the same comparisons. None where there are none: a NaN (whose
    payloads would order apart), a type without a fitting view."""
    import torch

    if magnitudes.dtype in (torch.bfloat16, torch.float16):
        keys = magnitudes.view(torch.int16)  # float32 holds these exactly: the same order
    elif magnitudes.dtype == torch.float32:
        keys = magnitudes.view(torch.int32)
    elif magnitudes.dtype == torch.float64:
        keys = magnitudes.float().view(torch.int32)  # mergekit ranks float64 rounded to float32
    else:
        return None
    if torch.isnan(magnitudes).any():
        return None
    return keys


def ascending_as_descending(keys: np.ndarray) -> np.ndarray:
    """In place: keys whose descending order is the ascending order of the non-negative
    `keys` (the largest value of the type minus each key; comparisons simply reverse)."""
    import numpy as np

    np.subtract(np.iinfo(keys.dtype).max, keys, out=keys)
    return keys


@functools.cache
def available() -> bool:
    """Whether the selection runs here and agrees with this torch's own argsort, descending and
    ascending, on inputs full of ties (the case where an unstable sort's order shows)."""
    import torch

    try:
        _kernel()
    except SelectionUnavailable:
        return False
    generator = torch.Generator().manual_seed(4321)
    for count in (5, 17, 100, 5_000, 70_001):
        base = (torch.randn(count, generator=generator) * 0.01).abs()
        base[::13] = 0
        for values in (base.to(torch.bfloat16), base):
            floats = values.float()
            for share in (0.1, 0.5, 0.9):
                keep = max(1, int(share * count))
                try:
                    got = select_range(integer_keys(values.clone()).numpy(), 0, keep)
                    up = ascending_as_descending(integer_keys(values.clone()).numpy())
                    got_up = select_range(up, count - keep, count)
                except SelectionUnavailable:
                    return False
                want = torch.argsort(floats, descending=True)[:keep]
                want_up = torch.sort(floats, descending=False).indices[count - keep:]
                if not (_same_set(got, want, count) and _same_set(got_up, want_up, count)):
                    return False
    return True


def _same_set(positions: np.ndarray, indices: torch.Tensor, count: int) -> bool:
    import numpy as np

    mine = np.zeros(count, dtype=bool)
    mine[positions] = True
    theirs = np.zeros(count, dtype=bool)
    theirs[indices.numpy()] = True
    return bool((mine == theirs).all())
