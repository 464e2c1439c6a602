"""How far apart two models with the same tensors are: per tensor relative L2 distance
and cosine similarity, streamed from the safetensors files a chunk at a time, so a diff of
two 70B models needs a few tens of MB, not two models' worth of memory. numpy only.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .tensor_io import NUMPY_DTYPES, ShardFiles, read_chunk
from .types import Component, ModelFiles, TensorInfo

# Elements per chunk: a few float64 arrays of this size are the diff's working memory.
CHUNK_ELEMENTS = 2_000_000

# Little-endian numpy dtype each safetensors dtype is read as (BF16 is widened by hand).


@dataclass
class DiffResult:
    tensors: list[dict[str, Any]] = field(default_factory=list)  # name, rel_l2, cosine, numel
    layers: dict[int | None, dict[str, float]] = field(default_factory=dict)  # layer -> kind -> rel_l2
    skipped: list[dict[str, str]] = field(default_factory=list)  # name, reason
    max_rel_l2: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON keys must be strings: layer None becomes "none"."""
        return {
            "tensors": self.tensors,
            "layers": {("none" if k is None else str(k)): v for k, v in self.layers.items()},
            "skipped": self.skipped,
            "max_rel_l2": self.max_rel_l2,
        }


def _distance(ta: TensorInfo, tb: TensorInfo, sa: ShardFiles, sb: ShardFiles) -> tuple[float, float]:
    """(relative L2, cosine) of one tensor pair, summed chunk by chunk in float64."""
    aa = bb = ab = dd = 0.0
    n = ta.numel
    step = max(1, int(CHUNK_ELEMENTS))
    for first in range(0, n, step):
        count = min(step, n - first)
        x = read_chunk(sa, ta, first, count)
        y = read_chunk(sb, tb, first, count)
        aa += float(np.dot(x, x))
        bb += float(np.dot(y, y))
        ab += float(np.dot(x, y))
        x -= y  # in place: no third array
        dd += float(np.dot(x, x))
        del x, y
    na, nb, nd = math.sqrt(aa), math.sqrt(bb), math.sqrt(dd)
    # ‖a‖ = 0: measure against the larger norm, so a tensor that appears from nothing is
    # 1.0 (all new) and two zero tensors are 0.0; never infinite.
    denom = na if na > 0 else nb
    rel = nd / denom if denom > 0 else 0.0
    # Cosine of a zero vector: 1.0 against another zero, 0.0 against anything else.
    cos = max(-1.0, min(1.0, ab / (na * nb))) if na > 0 and nb > 0 else float(na == nb)
    return rel, cos


def _placement(components: list[Component]) -> dict[str, tuple[int | None, str]]:
    """Tensor -> (layer, kind); a child's kind (attention, mlp, norm) beats its block's."""
    out: dict[str, tuple[int | None, str]] = {}

    def visit(c: Component, layer: int | None) -> None:
        layer = c.layer if c.layer is not None else layer
        kind = "other" if c.kind == "block" else c.kind  # a block's loose tensors
        for t in c.tensors:
            out[t] = (layer, kind)
        for child in c.children:  # after the parent, so the finer kind wins
            visit(child, layer)

    for c in components:
        visit(c, None)
    return out


def diff_models(
    a: ModelFiles,
    b: ModelFiles,
    *,
    reporter: Any = None,
    components: list[Component] | None = None,
) -> DiffResult:
    """Per-tensor distance of B from A, for tensors both hold with equal shapes.

    `components` is A's catalogue when the caller already has it; it groups the distances
    by layer and component kind.
    """
    from apps.monitoring.engine.reporter import JobCancelled  # engine-to-engine, no Django

    if components is None:
        from .components import catalogue

        components = catalogue(a)
    placement = _placement(components)

    result = DiffResult()
    common: list[tuple[TensorInfo, TensorInfo]] = []
    for name in sorted(set(a.tensors) | set(b.tensors)):
        ta, tb = a.tensors.get(name), b.tensors.get(name)
        if ta is None or tb is None:
            result.skipped.append({"name": name, "reason": f"only in {'B' if ta is None else 'A'}"})
        elif ta.shape != tb.shape:
            result.skipped.append({"name": name, "reason": f"shape {list(ta.shape)} vs {list(tb.shape)}"})
        elif ta.dtype not in NUMPY_DTYPES or tb.dtype not in NUMPY_DTYPES:
            result.skipped.append({"name": name, "reason": f"dtype {ta.dtype}/{tb.dtype} not supported"})
        else:
            common.append((ta, tb))

    sums: dict[tuple[int | None, str], list[float]] = {}  # (layer, kind) -> [Σ numel·rel, Σ numel]
    sa, sb = ShardFiles(a.root), ShardFiles(b.root)
    try:
        for i, (ta, tb) in enumerate(common):
            if reporter is not None and reporter.cancelled():
                raise JobCancelled(f"diff cancelled after {i} of {len(common)} tensors")
            rel, cos = _distance(ta, tb, sa, sb)
            result.tensors.append({"name": ta.name, "rel_l2": rel, "cosine": cos, "numel": ta.numel})
            acc = sums.setdefault(placement.get(ta.name, (None, "other")), [0.0, 0.0])
            acc[0] += rel * ta.numel
            acc[1] += ta.numel
            if reporter is not None:
                reporter.step(i + 1, len(common))
    finally:
        sa.close()
        sb.close()

    for (layer, kind), (weighted, numel) in sums.items():
        result.layers.setdefault(layer, {})[kind] = weighted / numel if numel else 0.0
    result.max_rel_l2 = max((t["rel_l2"] for t in result.tensors), default=0.0)
    return result


# -------------------------------------------------------------------------- heatmap

_KIND_ORDER = ["attention", "mlp", "norm", "embedding", "head", "vision", "projector", "block", "other"]
# White -> yellow -> orange -> red -> dark purple: light for "unchanged", dark for "moved".
_RAMP = [(255, 255, 255), (255, 237, 160), (254, 178, 76), (240, 59, 32), (189, 0, 38), (73, 0, 106)]
_EMPTY = (232, 232, 232)


def _colour(t: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, t)) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    lo, hi = _RAMP[i], _RAMP[i + 1]
    return (
        round(lo[0] + (hi[0] - lo[0]) * f),
        round(lo[1] + (hi[1] - lo[1]) * f),
        round(lo[2] + (hi[2] - lo[2]) * f),
    )


def _rows(result: DiffResult) -> list[tuple[str, dict[str, float]]]:
    """Embedding and other layer-less parts on top, layers in order, then what comes after
    the last layer (the final norm and the head) at the bottom, as in the model."""
    top = dict(result.layers.get(None, {}))
    bottom = {k: top.pop(k) for k in list(top) if k in ("head", "norm")}
    rows: list[tuple[str, dict[str, float]]] = []
    if top:
        rows.append(("embed/other", top))
    rows += [(f"layer {k}", result.layers[k]) for k in sorted(k for k in result.layers if k is not None)]
    if bottom:
        rows.append(("final/head", bottom))
    return rows


def heatmap_png(result: DiffResult, dest: Path) -> Path:
    """A layer x component-kind heatmap of rel_l2, as a PNG at `dest`."""
    from PIL import Image, ImageDraw, ImageFont

    dest = Path(dest)
    rows = _rows(result)
    present = {k for _, kinds in rows for k in kinds}
    cols = [k for k in _KIND_ORDER if k in present] + sorted(present - set(_KIND_ORDER))
    cols = cols or ["other"]
    vmax = max((v for _, kinds in rows for v in kinds.values()), default=0.0)

    font = ImageFont.load_default()
    cell_w, cell_h = 64, 16
    left, top, pad = 84, 22, 8
    legend_h = 40
    width = left + cell_w * len(cols) + pad
    height = top + cell_h * max(1, len(rows)) + legend_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    for j, kind in enumerate(cols):
        draw.text((left + j * cell_w + 4, 6), kind[:10], fill="black", font=font)
    for i, (label, kinds) in enumerate(rows):
        y = top + i * cell_h
        draw.text((4, y + 2), label, fill="black", font=font)
        for j, kind in enumerate(cols):
            x = left + j * cell_w
            v = kinds.get(kind)
            t = 0.0 if v is None or vmax <= 0 else v / vmax
            draw.rectangle([x, y, x + cell_w - 2, y + cell_h - 2], fill=_EMPTY if v is None else _colour(t))
            if v is not None:  # the number too: colours alone are hard to read off
                draw.text((x + 3, y + 2), f"{v:.3g}", fill="white" if t > 0.55 else "black", font=font)

    # Legend: the ramp from 0 to the largest value shown.
    ly = top + cell_h * max(1, len(rows)) + 8
    bar_w = min(160, width - left - pad)
    for x in range(bar_w):
        draw.line([(left + x, ly), (left + x, ly + 10)], fill=_colour(x / max(1, bar_w - 1)))
    draw.text((4, ly), "rel L2", fill="black", font=font)
    draw.text((left, ly + 13), "0", fill="black", font=font)
    draw.text((left + bar_w - 40, ly + 13), f"{vmax:.3g}", fill="black", font=font)

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
