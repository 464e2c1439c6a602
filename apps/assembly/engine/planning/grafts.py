"""Grafts: a component (a vision tower, a block range...) taken whole from a donor model in
place of the output's own, after the merge is planned; the shapes must match (the dtype is
cast on writing), and every donor tensor not grafted is dropped."""

from __future__ import annotations

import difflib
from pathlib import Path

from apps.registry.engine.components import catalogue, signature, walk
from apps.registry.engine.types import Component, ModelFiles, TensorInfo

from ..recipe import DTYPES
from .context import PlanContext, natural
from .errors import GraftError, GraftSignatureError
from .inputs import LoadedModel
from .result import OutputTensor, SourceTensor


def apply_grafts(ctx: PlanContext, config: dict) -> None:
    """Replace each grafted component's output tensors by the donor's (given `config`, the
    output's, to find the output's components)."""
    if not ctx.recipe.graft:
        return
    by_name = {o.name: o for o in ctx.outputs}
    for i, graft in enumerate(ctx.recipe.graft):
        donor = ctx.models[str(graft.from_)]
        out_files = ModelFiles(root=Path("<output>"), config=config, shards=[], tensors={
            o.name: TensorInfo(o.name, o.dtype, o.shape, 0, o.nbytes, "<output>") for o in ctx.outputs})
        out_components = list(walk(catalogue(out_files)))
        donor_components = list(walk(donor.components))
        pairs: list[tuple[str, str]] = []
        if isinstance(graft.component, tuple):
            into = graft.into if isinstance(graft.into, tuple) else graft.component
            for k, k2 in zip(range(*graft.component), range(*into), strict=True):
                pairs.append((donor.layer_prefix(k)[:-1], ctx.template.layer_prefix(k2)[:-1]))
        else:
            into_id = graft.into if isinstance(graft.into, str) else graft.component
            pairs.append((graft.component, into_id))
        for src_id, dst_id in pairs:
            src = _find_component(donor_components, src_id, f"graft[{i}]: model {donor.key!r}")
            dst = _find_component(out_components, dst_id, f"graft[{i}]: the output")
            _graft_one(ctx, i, donor, src, dst, by_name)


def _graft_one(ctx: PlanContext, index: int, donor: LoadedModel, src: Component, dst: Component,
               by_name: dict[str, OutputTensor]) -> None:
    dst_dtype = {n[len(dst.prefix):]: by_name[n].dtype for n in dst.tensors}
    donor_infos = []
    for n in src.tensors:
        info = donor.info(n)
        rel = n[len(src.prefix):]
        # The donor's dtype does not decide whether it fits; the writer casts.
        donor_infos.append(TensorInfo(n, dst_dtype.get(rel, info.dtype), info.shape, 0, 0, info.file))
    src_signature = signature(donor_infos, src.prefix)
    if src_signature != dst.signature:
        src_shapes = {n[len(src.prefix):]: list(donor.info(n).shape) for n in src.tensors}
        dst_shapes = {n[len(dst.prefix):]: list(by_name[n].shape) for n in dst.tensors}
        differences = [f"{rel}: {src_shapes.get(rel, 'absent')} vs {dst_shapes.get(rel, 'absent')}"
                       for rel in sorted(set(src_shapes) | set(dst_shapes), key=natural)
                       if src_shapes.get(rel) != dst_shapes.get(rel)]
        raise GraftSignatureError(
            f"graft[{index}]: component {src.id!r} of {donor.key!r} (signature {src_signature}) does "
            f"not fit {dst.id!r} of the output (signature {dst.signature}): {'; '.join(differences[:4])}")
    forced = ctx.recipe.out_dtype or ctx.recipe.dtype
    for name in dst.tensors:
        out = by_name[name]
        donor_name = src.prefix + name[len(dst.prefix):]
        for old in out.sources:
            ctx.drop(old.model, old.tensor, f"replaced by graft[{index}] ({src.id} from {donor.key!r})")
        info = donor.info(donor_name)
        out.sources = [SourceTensor(model=donor.key, tensor=donor_name, shape=tuple(info.shape),
                                    dtype=info.dtype, layer=src.layer, role="donor")]
        out.method, out.params, out.group = "graft", {}, "graft"
        out.dtype = DTYPES[forced] if forced else info.dtype
        out.note = f"graft[{index}]: {src.id} of {donor.key!r}"
    for name in donor.files.tensors:
        ctx.drop(donor.key, name, f"only the grafted component(s) are taken from {donor.key!r}")
    ctx.grafts.append({"index": index, "from": donor.key, "component": src.id, "into": dst.id,
                       "signature": dst.signature, "tensors": len(dst.tensors)})


def _find_component(components: list[Component], cid: str, where: str) -> Component:
    exact = [c for c in components if c.id == cid]
    if exact:
        return exact[0]
    suffix = [c for c in components if c.id.endswith("." + cid)]
    if len(suffix) == 1:
        return suffix[0]
    close = difflib.get_close_matches(cid, [c.id for c in components], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise GraftError(f"{where} has no component {cid!r}{hint}")
