"""YAML and JSON from outside (a browser, a file, a command line), parsed within budgets.

A few hundred bytes of YAML aliases can stand for billions of values: PyYAML builds the
shared graph cheaply, and the cost comes later, when pydantic or any other code walks the
expanded tree. Very deep nesting of either format ends in a RecursionError instead of a
message. So before anything walks the data:

- the document's size is capped (`max_bytes`; recipes and specs use 64 KB);
- nesting is capped (`max_depth` levels of lists and mappings), counted on the tree as the
  caller will see it, aliases expanded;
- YAML's node count, aliases expanded, is capped (`max_nodes`), counted while composing:
  each alias adds the size of the tree it names, measured once per shared node, so a bomb
  is refused at its first alias past the budget, as cheaply as its text is read;
- an alias inside the node it names (a cycle) is refused; `aliases=False` refuses anchors
  outright, for formats that never need them; integers longer than 4300 characters (Python's
  own decimal limit) are refused in every base.

YAML is scanned and parsed by libyaml (PyYAML's C parser) where installed; composing, where
the budgets are kept, is PyYAML's Python composer.

Every refusal and syntax error is raised as `error` (a ValueError subclass, `ParseError` by
default, called with one message) whose message names the source, the reason and, where the
input says it, the line and column. The instance also carries `source`, `reason`, `line` and
`column`, and json's own names `msg`, `lineno` and `colno`, so callers written for
`json.JSONDecodeError` keep working.

Plain Python and PyYAML: no Django, so every engine and the web layer share it.
"""

from __future__ import annotations

import contextlib
import json
import re
from itertools import accumulate
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml scans and parses in C; composing stays in Python below, where the budgets are.
    from yaml.cyaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None

MAX_BYTES = 64 * 1024
MAX_DEPTH = 64
MAX_NODES = 10_000
MAX_INT_CHARS = 4300  # Python's own cap on the digits of a decimal integer


class ParseError(ValueError):
    """YAML or JSON refused: not valid, or over a budget. The message names the source."""

    source: str
    reason: str
    line: int | None
    column: int | None


def size_text(max_bytes: int) -> str:
    """A byte budget as a person reads it: 64 KB, 1 MB."""
    if max_bytes >= 1_000_000:
        return f"{max_bytes // 1_000_000} MB"
    return f"{max_bytes // 1024} KB" if max_bytes >= 1024 else f"{max_bytes} bytes"


def _error(error: type[ValueError], message: str, *, source: str, reason: str,
           line: int | None = None, column: int | None = None) -> ValueError:
    exc = error(message)
    for name, value in (("source", source), ("reason", reason), ("line", line), ("column", column),
                        ("msg", reason), ("lineno", line), ("colno", column)):
        with contextlib.suppress(AttributeError):  # a caller's class with slots or properties
            setattr(exc, name, value)
    return exc


def _refused(error: type[ValueError], source: str, reason: str,
             line: int | None = None, column: int | None = None) -> ValueError:
    where = f" at line {line}, column {column}" if line is not None else ""
    return _error(error, f"{source}: {reason}{where}", source=source, reason=reason,
                  line=line, column=column)


def _check_size(text: str | bytes, max_bytes: int | None, source: str,
                error: type[ValueError]) -> None:
    if max_bytes is None:
        return
    # A character is at least one byte: only a text that might fit is encoded to be sure.
    if len(text) > max_bytes or (isinstance(text, str) and len(text.encode("utf-8", "surrogatepass"))
                                 > max_bytes):
        raise _refused(error, source, f"larger than {size_text(max_bytes)}")


# ------------------------------------------------------------------------------------ YAML


class _Refusal(Exception):
    """Raised inside the composer; turned into the caller's error with its source."""

    def __init__(self, reason: str, mark: Any):
        super().__init__(reason)
        self.reason = reason
        self.mark = mark


class _BoundedComposer(Composer):
    """PyYAML's composer, counting as it goes, aliases expanded: an alias adds the size of
    the tree it names, and that tree's height to the depth where it stands. Each named node
    is measured once (the graph is shared), so a bomb is refused at its first alias past the
    budget, before the rest of the text is read, and measuring costs what reading costs."""

    def _budget(self, *, max_depth: int, max_nodes: int | None, aliases: bool) -> None:
        self._max_depth, self._max_nodes, self._aliases = max_depth, max_nodes, aliases
        self._depth = self._nodes = 0
        self._open_anchors: set[str] = set()  # anchors of the collections being composed
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height)
        self.has_aliases = False

    def compose_node(self, parent, index):
        event = self.peek_event()
        if (isinstance(event, AliasEvent) or event.anchor is not None) and not self._aliases:
            raise _Refusal("YAML anchors and aliases are not accepted", event.start_mark)
        if isinstance(event, AliasEvent):
            if event.anchor in self._open_anchors:  # `&a [*a]`: a cycle, endless once expanded
                raise _Refusal("a YAML alias refers to a node that contains it", event.start_mark)
            self.has_aliases = True
            node = super().compose_node(parent, index)
            self._count(self._measure(node, self._depth, event.start_mark), event.start_mark)
            return node
        self._count(1, event.start_mark)
        if not isinstance(event, SequenceStartEvent | MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > self._max_depth:
            raise _Refusal(f"YAML nests deeper than {self._max_depth} levels", event.start_mark)
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(event.anchor)

    def _count(self, size: int, mark: Any) -> None:
        self._nodes += size
        if self._max_nodes is not None and self._nodes > self._max_nodes:
            what = "YAML aliases expand to" if self.has_aliases else "YAML has"
            raise _Refusal(f"{what} more than {self._max_nodes} nodes", mark)

    def _measure(self, node: Node, above: int, mark: Any) -> int:
        """The size of `node`'s tree, aliases expanded; refused when, standing under `above`
        collections, it would nest deeper than the budget. Recursion stops at that depth."""
        key = id(node)
        if key not in self._measured:
            if not isinstance(node, SequenceNode | MappingNode):
                self._measured[key] = (1, 0)
            else:
                if above + 1 > self._max_depth:
                    raise _Refusal(f"YAML nests deeper than {self._max_depth} levels", mark)
                children = node.value if isinstance(node, SequenceNode) else [
                    part for pair in node.value for part in pair]
                size, height = 1, 0
                for child in children:
                    size += self._measure(child, above + 1, mark)
                    height = max(height, self._measured[id(child)][1])
                    if self._max_nodes is not None and size > self._max_nodes:
                        raise _Refusal(f"YAML aliases expand to more than {self._max_nodes} nodes", mark)
                self._measured[key] = (size, height + 1)
        size, height = self._measured[key]
        if above + height > self._max_depth:
            raise _Refusal(f"YAML nests deeper than {self._max_depth} levels", mark)
        return size


class _BoundedConstructor(SafeConstructor):
    """PyYAML's safe constructor, refusing integers longer than Python reads in decimal:
    a 64 KB base-60 integer (`1:1:1:…`, YAML 1.1) otherwise costs seconds of bignum work."""

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_INT_CHARS:
            raise _Refusal(f"a YAML integer longer than {MAX_INT_CHARS} characters", node.start_mark)
        return super().construct_yaml_int(node)


_BoundedConstructor.add_constructor("tag:yaml.org,2002:int", _BoundedConstructor.construct_yaml_int)

if CParser is not None:
    class _Loader(_BoundedComposer, CParser, _BoundedConstructor, Resolver):
        def __init__(self, stream):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
else:  # pragma: no cover
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(_BoundedComposer, Reader, Scanner, Parser, _BoundedConstructor, Resolver):
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def _yaml_syntax_error(exc: yaml.YAMLError, source: str, error: type[ValueError]) -> ValueError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {line}, column {column}" if line is not None else ""
    return _error(error, f"{source}: not valid YAML{where}: {problem}", source=source,
                  reason=f"not valid YAML: {problem}", line=line, column=column)


def _from_refusal(refusal: _Refusal, source: str, error: type[ValueError]) -> ValueError:
    mark = refusal.mark
    return _refused(error, source, refusal.reason, mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None)


def _compose(loader: _Loader, source: str, error: type[ValueError], max_depth: int) -> Node | None:
    try:
        return loader.get_single_node()
    except _Refusal as refusal:
        raise _from_refusal(refusal, source, error) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None and "maximum nesting depth" in str(getattr(exc, "problem", "")):
            # libyaml's own cap (1000 levels), met while it scans ahead of the composer.
            raise _refused(error, source, f"YAML nests deeper than {max_depth} levels",
                           mark.line + 1, mark.column + 1) from None
        raise _yaml_syntax_error(exc, source, error) from None


def _loader(text: str | bytes, source: str, error: type[ValueError], max_bytes: int | None,
            **budget: Any) -> _Loader:
    _check_size(text, max_bytes, source, error)
    try:
        loader = _Loader(text)
    except UnicodeEncodeError:  # a str with a lone surrogate: libyaml reads UTF-8 only
        raise _refused(error, source, "not valid YAML: the text is not valid Unicode") from None
    loader._budget(**budget)
    return loader


def yaml_compose(text: str | bytes, *, source: str = "YAML", max_bytes: int | None = MAX_BYTES,
                 max_depth: int = MAX_DEPTH, max_nodes: int | None = MAX_NODES,
                 aliases: bool = True, error: type[ValueError] = ParseError) -> Node | None:
    """The document's node graph (None when empty), checked like `yaml_load`: for code that
    edits the text by the nodes' marks."""
    loader = _loader(text, source, error, max_bytes, max_depth=max_depth, max_nodes=max_nodes,
                     aliases=aliases)
    try:
        return _compose(loader, source, error, max_depth)
    finally:
        loader.dispose()


def yaml_load(text: str | bytes, *, source: str = "YAML", max_bytes: int | None = MAX_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int | None = MAX_NODES,
              aliases: bool = True, error: type[ValueError] = ParseError) -> Any:
    """`yaml.safe_load` within budgets: `max_bytes` of text, `max_depth` levels of nesting and
    `max_nodes` values, both counted with aliases expanded (`None`: no cap). `aliases=False`
    refuses anchors and aliases outright. Raises `error` with the source and the reason."""
    loader = _loader(text, source, error, max_bytes, max_depth=max_depth, max_nodes=max_nodes,
                     aliases=aliases)
    try:
        root = _compose(loader, source, error, max_depth)
        if root is None:
            return None
        try:
            return loader.construct_document(root)
        except _Refusal as refusal:
            raise _from_refusal(refusal, source, error) from None
        except yaml.YAMLError as exc:
            raise _yaml_syntax_error(exc, source, error) from None
        except Exception as exc:
            # PyYAML's constructors fail in many ways on explicit tags (`!!int` alone:
            # IndexError, `!!timestamp` alone: AttributeError, a month 13: ValueError); the
            # shape is already within budget, so each of these is one bad value.
            reason = f"a YAML value cannot be read ({type(exc).__name__}: {exc})"
            raise _refused(error, source, reason) from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------ JSON

# A JSON string (escapes included) or a bracket: outside strings, brackets are the nesting.
# A string left open runs to the end, so every quote starts a match: linear, whatever the input.
_STRING = r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)'
_JSON_STRING = re.compile(_STRING)
_JSON_TOKEN = re.compile(_STRING + r"|[\[\]{}]")
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_deepest(text: str) -> int:
    """How deep the brackets outside strings go; a pass in C (regex and accumulate)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _json_too_deep_at(text: str, max_depth: int) -> int:
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        step = _STEP.get(match.group())
        if step:
            depth += step
            if depth > max_depth:
                return match.start()
    return 0  # pragma: no cover - only called once the fast pass found it too deep


def json_loads(text: str | bytes, *, source: str = "JSON", max_bytes: int | None = MAX_BYTES,
               max_depth: int = MAX_DEPTH, error: type[ValueError] = ParseError) -> Any:
    """`json.loads` within budgets: `max_bytes` of text (`None`: no cap) and `max_depth`
    levels of arrays and objects, checked before parsing; never a RecursionError. Bytes are
    decoded as `json.loads` decodes them (UTF-8/16/32 with a BOM); bytes that are not text
    raise UnicodeDecodeError (a ValueError), as they do there."""
    _check_size(text, max_bytes, source, error)
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
    if (text.count("[") + text.count("{") > max_depth and _json_deepest(text) > max_depth):
        pos = _json_too_deep_at(text, max_depth)
        line = text.count("\n", 0, pos) + 1
        column = pos - text.rfind("\n", 0, pos)
        raise _error(error, f"{source}: JSON nests deeper than {max_depth} levels at line {line}, "
                     f"column {column}", source=source, reason=f"nests deeper than {max_depth} levels",
                     line=line, column=column)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(error, f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}, column "
                     f"{exc.colno}", source=source, reason=exc.msg, line=exc.lineno,
                     column=exc.colno) from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise _refused(error, source, f"a JSON value cannot be read: {exc}") from None
    except RecursionError:  # only when the stack was already deep: the budget is far below it
        raise _refused(error, source, "JSON nests too deep to read") from None
