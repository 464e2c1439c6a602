"""Component extraction: chosen components of a model (layers 8-15, its head, one block's
MLP…) saved on their own with their origin and signatures, for later recipes to graft.

Tensors keep their names, so a component drops back into a model of the same layout,
and `component.json` records where it came from and each part's signature.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter
from apps.registry.engine.components import catalogue, walk
from apps.registry.engine.model import read_model
from apps.registry.engine.tensor_io import ShardFiles
from apps.registry.engine.types import Component

from .writer import OutTensor, ShardedWriter

_RANGE = re.compile(r"^(?:(?P<prefix>.*?)\.)?(?P<a>\d+)(?:-(?P<b>\d+))?$")


class SelectionError(ValueError):
    pass


def select(components: list[Component], selection: list[str]) -> list[Component]:
    """`head`, `embed`, `final_norm`, an exact id (`model.layers.3.mlp`), a layer range of
    the main stack (`8-15`, `layers 8-15`) or of a named stack (`model.layers.8-15`)."""
    by_id = {c.id: c for c in walk(components)}
    blocks = [c for c in components if c.kind == "block"]
    chosen: list[Component] = []
    for raw in selection:
        token = raw.strip().replace("layers ", "").replace(" ", "")
        if token in by_id:
            chosen.append(by_id[token])
            continue
        m = _RANGE.match(token)
        if not m:
            raise SelectionError(f"{raw!r}: not a component id, kind or layer range; ids are "
                                 f"{', '.join(sorted(by_id)[:12])}…")
        a = int(m["a"])
        b = int(m["b"]) if m["b"] is not None else a
        stack = [c for c in blocks if m["prefix"] is None or c.id.rsplit(".", 1)[0] == m["prefix"]
                 or c.id.rsplit(".", 1)[0].endswith("." + (m["prefix"] or ""))]
        picked = [c for c in stack if c.layer is not None and a <= c.layer <= b]
        present = {c.layer for c in picked}
        missing = [i for i in range(a, b + 1) if i not in present]
        if missing:
            have = sorted({c.layer for c in stack if c.layer is not None})
            raise SelectionError(f"{raw!r}: layers {missing} are not in the model "
                                 f"(it has {have[0]}-{have[-1]})" if have else f"{raw!r}: no layers")
        chosen.extend(picked)
    seen, unique = set(), []
    for c in chosen:
        if c.id not in seen:
            seen.add(c.id)
            unique.append(c)
    return unique


def extract_components(model_dir: Path, selection: list[str], dest: Path, *,
                       reporter: Reporter | None = None) -> dict:
    """Write the selected components to the new folder `dest` (temp + rename)."""
    reporter = reporter or NullReporter()
    if dest.exists():
        raise SelectionError(f"{dest} already exists")
    model = read_model(Path(model_dir))
    chosen = select(catalogue(model), selection)
    if not chosen:
        raise SelectionError("nothing selected")
    names = [n for c in chosen for n in c.tensors]
    infos = [model.tensors[n] for n in names]
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        writer = ShardedWriter(tmp, [OutTensor(i.name, i.dtype, i.shape) for i in infos],
                               metadata={"audobon": "component"})
        with ShardFiles(model.root) as shards:
            for done, info in enumerate(infos, 1):
                if reporter.cancelled():
                    raise JobCancelled
                writer.write(info.name, shards.read_raw(info))
                reporter.step(done, len(infos))
        files = writer.close()
        record = {
            "origin": str(model.root),
            "architecture": (model.config or {}).get("model_type"),
            "components": [{"id": c.id, "kind": c.kind, "layer": c.layer, "signature": c.signature,
                            "params": c.params, "tensors": c.tensors} for c in chosen],
            "config": model.config, "files": files,
        }
        (tmp / "component.json").write_text(json.dumps(record, indent=1))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
