"""What a pair of models allows: merging weights, splicing layer ranges, swapping
components, applying an adapter. Header facts only (shapes, dtypes, signatures), so it
answers in well under a second and never imports torch.

Every answer is `{"ok": bool, "reasons": [...], ...}`; a "no" always names the tensors,
layers or shapes that stand in the way, so the user can see what to change.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from .components import layer_ranges
from .lora_names import PEFT_PREFIX, lora_name
from .types import Component, ModelFiles, TensorInfo

# How many examples a reason lists before it says "and N more".
EXAMPLES = 5
# How many per-module problems an adapter check lists.
MAX_REASONS = 10

# PEFT prefixes its state dict with the wrapper's path to the base model.
_PEFT_PREFIXES = (PEFT_PREFIX,)


# --------------------------------------------------------------------------- helpers


def _catalogue(model: ModelFiles) -> list[Component]:
    # Imported here so this module loads even while the catalogue is being rebuilt.
    from .components import catalogue

    return catalogue(model)


def _walk(components: Iterable[Component]) -> Iterator[Component]:
    """Every component and, after it, its children."""
    for c in components:
        yield c
        yield from _walk(c.children)


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _examples(items: list[str], n: int = EXAMPLES) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _layer_of(components: list[Component]) -> dict[str, int]:
    """Tensor name -> layer index, from the catalogue's blocks."""
    out: dict[str, int] = {}
    for c in _walk(components):
        if c.layer is not None:
            for t in c.tensors:
                out[t] = c.layer
    return out


def _relative(name: str, layer: int | None) -> str:
    """The tensor's name inside its layer: `model.layers.3.mlp.up_proj.weight` -> `mlp.up_proj.weight`."""
    if layer is None:
        return name
    m = re.search(rf"(?:^|\.){layer}\.", name)
    return name[m.end():] if m else name


def _inside(name: str, component: Component) -> str:
    """A tensor's name relative to its component: the catalogue's prefix when it has one."""
    prefix = getattr(component, "prefix", "")
    if prefix and name.startswith(prefix):
        return name[len(prefix):]
    return _relative(name, component.layer)


def _describe_difference(
    ta: dict[str, TensorInfo], tb: dict[str, TensorInfo], ca: Component, cb: Component
) -> list[str]:
    """What makes two components' signatures differ, tensor by tensor (names relative
    to the component, so layer 3 of one compares with layer 5 of the other)."""
    ra = {_inside(n, ca): ta[n] for n in ca.tensors if n in ta}
    rb = {_inside(n, cb): tb[n] for n in cb.tensors if n in tb}
    diffs: list[str] = []
    only_a = sorted(set(ra) - set(rb))
    only_b = sorted(set(rb) - set(ra))
    if only_a:
        diffs.append(f"only in A: {_examples(only_a, 3)}")
    if only_b:
        diffs.append(f"only in B: {_examples(only_b, 3)}")
    for rel in sorted(set(ra) & set(rb)):
        a, b = ra[rel], rb[rel]
        if a.shape != b.shape:
            diffs.append(f"{rel} {_shape(a.shape)} vs {_shape(b.shape)}")
        elif a.dtype != b.dtype:
            diffs.append(f"{rel} {a.dtype} vs {b.dtype} (cast one side first)")
    return diffs or ["tensor layout differs"]


# --------------------------------------------------------------------- weight merge


def _weight_merge(a: ModelFiles, b: ModelFiles, la: dict[str, int], lb: dict[str, int]) -> dict[str, Any]:
    reasons: list[str] = []
    notes: list[str] = []
    if a.adapter_config or b.adapter_config:
        side = "A" if a.adapter_config else "B"
        return {
            "ok": False,
            "reasons": [f"{side} is a PEFT adapter, not full weights: merge it into its base first"],
            "notes": notes,
        }
    names_a, names_b = set(a.tensors), set(b.tensors)
    for label, only, layers_of in (("A", names_a - names_b, la), ("B", names_b - names_a, lb)):
        if not only:
            continue
        # Whole extra layers read better as a layer range than as tensor names.
        in_layers = sorted(n for n in only if n in layers_of)
        loose = sorted(n for n in only if n not in layers_of)
        if in_layers:
            layers = [layers_of[n] for n in in_layers]
            reasons.append(
                f"{len(in_layers)} tensors of layers {layer_ranges(layers)} only in {label}"
                f" (e.g. {_examples(in_layers, 2)})"
            )
        if loose:
            reasons.append(f"{len(loose)} tensors only in {label}: {_examples(loose)}")
    mismatched = [
        f"{n} {_shape(a.tensors[n].shape)} vs {_shape(b.tensors[n].shape)}"
        for n in sorted(names_a & names_b)
        if a.tensors[n].shape != b.tensors[n].shape
    ]
    if mismatched:
        reasons.append(f"{len(mismatched)} shape mismatches: {_examples(mismatched)}")
    dtypes = sorted(
        {(a.tensors[n].dtype, b.tensors[n].dtype) for n in names_a & names_b}
        - {(a.tensors[n].dtype, a.tensors[n].dtype) for n in names_a}
    )
    if dtypes:
        pairs = ", ".join(f"{x} vs {y}" for x, y in dtypes)
        notes.append(f"dtypes differ ({pairs}): the merge computes in float32 and casts the result")
    if not a.tensors or not b.tensors:
        reasons.append("one side has no safetensors weights")
    return {"ok": not reasons, "reasons": reasons, "notes": notes}


# --------------------------------------------------------------------- layer splice


def _blocks(components: list[Component]) -> list[Component]:
    return sorted((c for c in components if c.kind == "block" and c.layer is not None), key=lambda c: c.layer)


def _layer_splice(a: ModelFiles, b: ModelFiles, ca: list[Component], cb: list[Component]) -> dict[str, Any]:
    ba, bb = _blocks(ca), _blocks(cb)
    notes: list[str] = []
    if not ba or not bb:
        side = " and ".join(s for s, bl in (("A", ba), ("B", bb)) if not bl)
        return {"ok": False, "reasons": [f"{side} has no repeated layers to splice"], "notes": notes}
    sigs_a = {c.signature for c in ba}
    sigs_b = {c.signature for c in bb}
    if len(ba) != len(bb):
        notes.append(f"A has {len(ba)} layers, B has {len(bb)}")
    if sigs_a == sigs_b:
        if len(sigs_a) > 1:
            notes.append("layers are not all alike: splice only layers with equal signatures")
        return {"ok": True, "reasons": [], "notes": notes}
    # The first layer, in order, whose shape has no match on the other side, compared
    # with the other model's layer of the same index (or its first).
    reasons: list[str] = []
    compared: set[tuple[int | None, int | None]] = set()
    for label, mine, theirs, their_sigs in (("A", ba, bb, sigs_b), ("B", bb, ba, sigs_a)):
        first = next((c for c in mine if c.signature not in their_sigs), None)
        if first is None:
            continue
        peer = next((c for c in theirs if c.layer == first.layer), theirs[0])
        x, y = (first, peer) if label == "A" else (peer, first)
        unmatched = [c.layer for c in mine if c.signature not in their_sigs]
        what = (f"layer{'s' if len(unmatched) > 1 else ''} {layer_ranges(unmatched)} of {label} "
                f"match{'' if len(unmatched) > 1 else 'es'} no layer of the other model")
        if (x.layer, y.layer) in compared:
            reasons.append(what)
            continue
        compared.add((x.layer, y.layer))
        diff = _describe_difference(a.tensors, b.tensors, x, y)
        reasons.append(f"{what}; A layer {x.layer} vs B layer {y.layer}: {_examples(diff, 3)}")
    return {"ok": False, "reasons": reasons, "notes": notes}


# ------------------------------------------------------------------- component swap


def _component_swap(a: ModelFiles, b: ModelFiles, ca: list[Component], cb: list[Component]) -> dict[str, Any]:
    ia = {c.id: c for c in _walk(ca)}
    ib = {c.id: c for c in _walk(cb)}
    swappable = [cid for cid in ia if cid in ib and ia[cid].kind == ib[cid].kind
                 and ia[cid].signature == ib[cid].signature]
    not_swappable: dict[str, str] = {}
    for cid in ia:
        if cid in ib and cid not in swappable:
            if ia[cid].kind != ib[cid].kind:
                not_swappable[cid] = f"kind {ia[cid].kind} vs {ib[cid].kind}"
            else:
                diff = _describe_difference(a.tensors, b.tensors, ia[cid], ib[cid])
                not_swappable[cid] = _examples(diff, 3)
    # Layers that differ the same way make one reason ("block of layers 0-31: ..."), not 32.
    grouped: dict[tuple[str, str], list[Component]] = {}
    for cid, why in not_swappable.items():
        grouped.setdefault((ia[cid].kind, why), []).append(ia[cid])
    reasons = []
    for (kind, why), comps in grouped.items():
        layers = [c.layer for c in comps if c.layer is not None]
        if len(comps) > 1 and len(layers) == len(comps):
            reasons.append(f"{kind} of layers {layer_ranges(layers)}: {why}")
        else:
            reasons += [f"{c.id}: {why}" for c in comps]
    for label, mine, theirs in (("A", ia, ib), ("B", ib, ia)):
        only = [c for cid, c in mine.items() if cid not in theirs]
        layered = [c.layer for c in only if c.layer is not None]
        if layered:
            reasons.append(f"layers {layer_ranges(layered)} only in {label}")
        loose = [c.id for c in only if c.layer is None]
        if loose:
            reasons.append(f"only in {label}: {_examples(loose)}")
    # By kind: a kind is swappable when some component of it has its equal on the other
    # side, even under another id (layer 2 of A for layer 5 of B).
    sigs_b = {(c.kind, c.signature) for c in ib.values()}
    kinds: dict[str, bool] = {}
    for c in ia.values():
        kinds[c.kind] = kinds.get(c.kind, False) or (c.kind, c.signature) in sigs_b
    return {
        "ok": bool(swappable),
        "reasons": reasons,
        "swappable": swappable,
        "not_swappable": not_swappable,
        "kinds": kinds,
    }


# -------------------------------------------------------------------------- adapter


def _strip_peft(name: str) -> str:
    for p in _PEFT_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def _base_weight(base: ModelFiles, module: str, suffix: str = "weight") -> TensorInfo | None:
    """The base tensor a PEFT module name points at, tolerating a base saved with or
    without the task head's `model.` wrapper."""
    want = f"{module}.{suffix}"
    if want in base.tensors:
        return base.tensors[want]
    hits = [t for n, t in base.tensors.items() if n.endswith("." + want) or want.endswith("." + n)]
    return hits[0] if len(hits) == 1 else None


def _module_names(base: ModelFiles) -> set[str]:
    return {n.rsplit(".", 1)[0] for n in base.tensors if n.endswith(".weight")}


def _targets_found(targets: Any, modules: set[str]) -> list[str]:
    """The configured target modules that match nothing in the base."""
    if not targets or targets == "all-linear":
        return []
    if isinstance(targets, str):  # PEFT treats a string as a full-match regex
        try:
            return [] if any(re.fullmatch(targets, m) for m in modules) else [targets]
        except re.error:
            return [targets]
    leaves = {m.rsplit(".", 1)[-1] for m in modules}
    return [t for t in targets if t not in leaves and not any(m.endswith("." + t) or m == t for m in modules)]


def _adapter(a: ModelFiles, b: ModelFiles) -> dict[str, Any]:
    if bool(a.adapter_config) == bool(b.adapter_config):
        why = "both are PEFT adapters" if a.adapter_config else "neither is a PEFT adapter"
        return {"ok": False, "reasons": [why], "adapter": None}
    adapter, base, side = (a, b, "A") if a.adapter_config else (b, a, "B")
    cfg = adapter.adapter_config or {}
    reasons: list[str] = []
    if base.adapter_config is None and not base.tensors:
        reasons.append("the base has no safetensors weights")
    if cfg.get("peft_type", "LORA") not in ("LORA", "ADALORA"):
        reasons.append(f"adapter type {cfg.get('peft_type')} is not LoRA: shapes not checked")

    modules = _module_names(base)
    reasons += [f"target module {t!r} matches no module in the base" for t in _targets_found(
        cfg.get("target_modules"), modules)]

    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    rank_pattern: dict[str, int] = cfg.get("rank_pattern") or {}
    parts: dict[str, dict[str, TensorInfo]] = {}
    extra: list[str] = []
    for name, info in adapter.tensors.items():
        m = lora_name(name)
        if m:
            parts.setdefault(m.module, {})[m.part] = info
        else:
            extra.append(name)

    for module, p in sorted(parts.items()):
        if "lora_embedding_A" in p or "lora_embedding_B" in p:
            reasons += _check_embedding(base, module, p)
            continue
        la, lb = p.get("lora_A"), p.get("lora_B")
        if la is None or lb is None:
            reasons.append(f"{module}: has {'lora_A' if la else 'lora_B'} without its pair")
            continue
        w = _base_weight(base, module)
        if w is None:
            reasons.append(f"{module}: no such module in the base")
            continue
        if len(w.shape) != 2 or len(la.shape) != 2 or len(lb.shape) != 2:
            reasons.append(f"{module}: expected 2-d weights, got base {_shape(w.shape)}, "
                           f"lora_A {_shape(la.shape)}, lora_B {_shape(lb.shape)}")
            continue
        out_f, in_f = (w.shape[1], w.shape[0]) if fan_in_fan_out else w.shape
        r = la.shape[0]
        want_r = _rank_for(module, rank_pattern, cfg.get("r"))
        problems = []
        if lb.shape[1] != r:
            problems.append(
                f"lora_B {_shape(lb.shape)} has rank {lb.shape[1]} but lora_A {_shape(la.shape)} has {r}")
        if want_r is not None and r != want_r and cfg.get("peft_type", "LORA") == "LORA":
            problems.append(f"rank {r} but the adapter config says r={want_r}")
        if la.shape[1] != in_f:
            problems.append(f"lora_A {_shape(la.shape)} expects {la.shape[1]} inputs, base weight "
                            f"{_shape(w.shape)} has {in_f}")
        if lb.shape[0] != out_f:
            problems.append(f"lora_B {_shape(lb.shape)} gives {lb.shape[0]} outputs, base weight "
                            f"{_shape(w.shape)} has {out_f}")
        reasons += [f"{module}: {x}" for x in problems]

    # Fully trained modules (`modules_to_save`) replace the base tensor: shapes must match.
    for name in sorted(extra):
        rel = _strip_peft(name).replace(".modules_to_save.default", "")
        module, _, suffix = rel.rpartition(".")
        w = _base_weight(base, module, suffix) if module else None
        t = adapter.tensors[name]
        if w is None:
            reasons.append(f"{rel}: saved module has no counterpart in the base")
        elif w.shape != t.shape:
            reasons.append(f"{rel}: {_shape(t.shape)} in the adapter vs {_shape(w.shape)} in the base")
    if not parts and not extra:
        reasons.append("the adapter holds no LoRA tensors")
    if len(reasons) > MAX_REASONS:  # a wrong base fails every module; the first ones tell
        reasons = [*reasons[:MAX_REASONS], f"and {len(reasons) - MAX_REASONS} more problems"]
    return {"ok": not reasons, "reasons": reasons, "adapter": side, "modules": len(parts)}


def _rank_for(module: str, pattern: dict[str, int], default: Any) -> int | None:
    for key, r in pattern.items():
        try:
            hit = module.endswith("." + key) or re.search(rf"(^|\.){key}$", module) is not None
        except re.error:
            hit = False
        if hit:
            return int(r)
    return int(default) if isinstance(default, int) else None


def _check_embedding(base: ModelFiles, module: str, p: dict[str, TensorInfo]) -> list[str]:
    # Embedding LoRA: A is [r, num_embeddings], B is [dim, r]; the base is [num_embeddings, dim].
    la, lb = p.get("lora_embedding_A"), p.get("lora_embedding_B")
    if la is None or lb is None:
        return [f"{module}: embedding LoRA without its A/B pair"]
    w = _base_weight(base, module)
    if w is None:
        return [f"{module}: no such module in the base"]
    out = []
    if len(w.shape) != 2 or la.shape[1:] != (w.shape[0],) or lb.shape[0] != w.shape[1]:
        out.append(f"{module}: lora_embedding_A {_shape(la.shape)} / lora_embedding_B {_shape(lb.shape)} "
                   f"do not fit the base embedding {_shape(w.shape)}")
    if lb.shape[1:] != la.shape[:1]:
        out.append(f"{module}: lora_embedding_B {_shape(lb.shape)} rank differs from lora_embedding_A "
                   f"{_shape(la.shape)}")
    return out


# ----------------------------------------------------------------------- public API


def pair_compatibility(
    a: ModelFiles,
    b: ModelFiles,
    ca: list[Component] | None = None,
    cb: list[Component] | None = None,
) -> dict[str, dict[str, Any]]:
    """What models A and B allow together. Pass catalogues already built to save the work."""
    ca = _catalogue(a) if ca is None else ca
    cb = _catalogue(b) if cb is None else cb
    la, lb = _layer_of(ca), _layer_of(cb)
    return {
        "weight_merge": _weight_merge(a, b, la, lb),
        "layer_splice": _layer_splice(a, b, ca, cb),
        "component_swap": _component_swap(a, b, ca, cb),
        "adapter": _adapter(a, b),
    }


def compatibility_matrix(models: dict[str, ModelFiles]) -> dict[str, Any]:
    """Every unordered pair of two or more models, each catalogued once."""
    if len(models) < 2:
        raise ValueError("a compatibility matrix needs two or more models")
    cats = {name: _catalogue(m) for name, m in models.items()}
    pairs = [
        {"a": x, "b": y, **pair_compatibility(models[x], models[y], cats[x], cats[y])}
        for x, y in itertools.combinations(models, 2)
    ]
    return {"models": list(models), "pairs": pairs}


def compatible_components(
    target: Component, candidates: dict[str, list[Component]]
) -> list[tuple[str, Component]]:
    """Every component (children included) in the candidate models that can stand in for
    `target`: same kind and same signature, hence same relative names, shapes and dtypes."""
    return [
        (model, c)
        for model, comps in candidates.items()
        for c in _walk(comps)
        if c.kind == target.kind and c.signature == target.signature
    ]
