"""Gradients in a recipe's text: find every parameter given as a list of numbers (mergekit's
gradient: anchor values spread evenly over the layers, interpolated linearly between them) and
rewrite one of them in place.

Edits replace just that list's characters in the YAML, found through PyYAML's node marks, so the
rest of the recipe (comments, order, layout) stays exactly as the user wrote it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import yaml
from yaml.constructor import SafeConstructor

from apps.assets.engine.safeparse import yaml_compose

_SAFE = SafeConstructor()  # builds a scalar node's value without parsing its text again

# Where parameters live in a recipe: the top level, each model, each slice's sources.
_CONTAINERS = (("models",), ("slices", "sources"))
MAX_POINTS = 64


class GradientError(ValueError):
    pass


@dataclass(frozen=True)
class Gradient:
    path: str  # dot-separated keys and indices, e.g. "models.0.parameters.weight"
    name: str  # the parameter
    where: str  # for people: "all models", "model tune-a", "slice 1 · tune-b", plus a filter
    values: tuple[float, ...]

    def at(self, t: float) -> float:
        """The value at relative depth t in [0, 1], as mergekit interpolates it."""
        return interpolate(self.values, t)


def interpolate(values: tuple[float, ...] | list[float], t: float) -> float:
    if len(values) == 1:
        return values[0]
    pos = min(max(t, 0.0), 1.0) * (len(values) - 1)
    low = min(int(pos), len(values) - 2)
    frac = pos - low
    return values[low] * (1 - frac) + values[low + 1] * frac


def resample(values: tuple[float, ...] | list[float], points: int) -> list[float]:
    """The same curve through `points` evenly spaced anchors (2 to MAX_POINTS)."""
    if not 2 <= points <= MAX_POINTS:
        raise GradientError(f"a gradient has 2 to {MAX_POINTS} points, not {points}")
    return [round(interpolate(values, i / (points - 1)), 6) for i in range(points)]


def parse_points(raw: list[str]) -> list[float]:
    """Numbers typed by a person, each checked: point 2 of "0, x, 1" is named when it is wrong."""
    values = []
    for i, text in enumerate(raw, 1):
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise GradientError(f"point {i}: {text.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise GradientError(f"point {i}: {text.strip()!r} is not a finite number")
        values.append(value)
    return values


def _compose(text: str) -> yaml.Node | None:
    """The recipe's node graph, under the same size, depth and alias budgets as parsing."""
    return yaml_compose(text, source="the recipe", error=GradientError)


def _mapping(node: yaml.Node | None) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _number(node: yaml.Node) -> float | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag not in ("tag:yaml.org,2002:int",
                                                                  "tag:yaml.org,2002:float"):
        return None
    try:  # the node's own value, without parsing its text again
        make = _SAFE.construct_yaml_int if node.tag.endswith("int") else _SAFE.construct_yaml_float
        return float(make(node))
    except (ValueError, TypeError, OverflowError, IndexError, AttributeError):
        return None


def _numbers(node: yaml.Node) -> tuple[float, ...] | None:
    if not isinstance(node, yaml.SequenceNode) or len(node.value) < 2:
        return None
    values = tuple(_number(item) for item in node.value)
    return None if any(v is None for v in values) else values  # type: ignore[return-value]


def _ref(fields: dict[str, yaml.Node], index: int) -> str:
    model = fields.get("model")
    return model.value if isinstance(model, yaml.ScalarNode) else f"#{index}"


def _walk(root: yaml.Node):
    """(path, name, where, sequence node) for every gradient in the recipe."""
    top = _mapping(root)

    def in_parameters(params: yaml.Node | None, prefix: str, where: str):
        for name, setting in _mapping(params).items():
            path = f"{prefix}parameters.{name}"
            if _numbers(setting) is not None:
                yield path, name, where, setting
            elif isinstance(setting, yaml.SequenceNode):  # conditionals: [{filter, value}, …]
                for i, item in enumerate(setting.value):
                    cond = _mapping(item)
                    if "value" in cond and _numbers(cond["value"]) is not None:
                        label = cond["filter"].value if "filter" in cond and isinstance(
                            cond["filter"], yaml.ScalarNode) else "everything else"
                        yield f"{path}.{i}.value", name, f"{where} · {label}", cond["value"]

    yield from in_parameters(top.get("parameters"), "", "all models")
    models = top.get("models")
    if isinstance(models, yaml.SequenceNode):
        for i, entry in enumerate(models.value):
            fields = _mapping(entry)
            yield from in_parameters(fields.get("parameters"), f"models.{i}.", f"model {_ref(fields, i)}")
    slices = top.get("slices")
    if isinstance(slices, yaml.SequenceNode):
        for i, entry in enumerate(slices.value):
            slice_fields = _mapping(entry)
            yield from in_parameters(slice_fields.get("parameters"), f"slices.{i}.", f"slice {i + 1}")
            sources = slice_fields.get("sources")
            if isinstance(sources, yaml.SequenceNode):
                for j, source in enumerate(sources.value):
                    fields = _mapping(source)
                    yield from in_parameters(fields.get("parameters"), f"slices.{i}.sources.{j}.",
                                             f"slice {i + 1} · {_ref(fields, j)}")


def find_gradients(text: str) -> list[Gradient]:
    """Every gradient in the recipe, in the order they appear."""
    root = _compose(text)
    if root is None:
        return []
    return [Gradient(path, name, where, _numbers(node)) for path, name, where, node in _walk(root)]


def set_gradient(text: str, path: str, values: list[float]) -> str:
    """The recipe with the gradient at `path` replaced by `values`; nothing else changes."""
    if not 2 <= len(values) <= MAX_POINTS:
        raise GradientError(f"a gradient has 2 to {MAX_POINTS} points, not {len(values)}")
    for i, v in enumerate(values, 1):
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise GradientError(f"point {i}: {v!r} is not a finite number")
    root = _compose(text)
    node = next((n for p, _, _, n in _walk(root) if p == path), None) if root is not None else None
    if node is None:
        raise GradientError(f"the recipe has no gradient at {path!r}")
    start, end = node.start_mark.index, node.end_mark.index
    flow = "[" + ", ".join(_format(v) for v in values) + "]"
    if not node.flow_style:
        # A block list ("- 0.1" lines) becomes a flow list on the line of its key.
        line_start = text.rfind("\n", 0, start) + 1
        key_end = text.rfind(":", 0, start)
        if text[line_start:start].strip("- \t") == "" and key_end != -1:
            start = key_end + 1
            flow = " " + flow
        end = _block_end(text, node)
    return text[:start] + flow + text[end:]


def _block_end(text: str, node: yaml.SequenceNode) -> int:
    """Where a block sequence's last item ends (PyYAML's end mark can run into the next line)."""
    last = node.value[-1]
    return last.end_mark.index


def _format(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{float(value):.1f}"
    return repr(round(float(value), 6))
