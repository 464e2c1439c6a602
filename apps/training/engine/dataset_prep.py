"""Datasets for training: read a user's file, map its columns, check every row, write the
canonical form (`audobon.dataset/1`), and measure it against a model's tokenizer.

Sources: JSON Lines (`.jsonl`, or `.json` holding one list of rows), CSV (with a header
row), Parquet, and plain text (`.txt`: one row per non-empty line). They are read through
`datasets` (Arrow, memory-mapped); JSON Lines, CSV and text get a first pass of their own
that names each malformed line, which Arrow's readers cannot do.

Formats, detected from the (mapped) column names:

    alpaca          instruction, output (+ input, system)    -> chat
    sharegpt        conversations: [{from, value}, ...]      -> chat
    messages        messages: [{role, content}, ...]         -> chat
    text            text                                     -> text
    classification  text, label                              -> classification

A version's folder holds `train.jsonl`, `validation.jsonl` (canonical rows, one JSON object
a line) and `dataset.json` (the card). Canonical rows: chat `{"messages": [...]}`, text
`{"text": ...}`, classification `{"text": ..., "label": "..."}`; other columns of the
source ride along unchanged.

Nothing here imports Django, torch or transformers; `datasets`, `tokenizers`, `jinja2`
and Pillow are imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from apps.assets.engine.safeparse import json_loads
from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter

SCHEMA = "audobon.dataset/1"
TASK_OF_FORMAT = {"alpaca": "chat", "sharegpt": "chat", "messages": "chat", "text": "text",
                  "classification": "classification"}
FORMATS = tuple(TASK_OF_FORMAT)
# The fields each format reads: (required, optional).
FORMAT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alpaca": (("instruction", "output"), ("input", "system")),
    "sharegpt": (("conversations",), ("system",)),
    "messages": (("messages",), ()),
    "text": (("text",), ()),
    "classification": (("text", "label"), ()),
}
FIELDS = ("instruction", "input", "output", "system", "conversations", "messages", "text", "label")
SOURCE_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
                ".txt": "text"}
SPLITS = ("train", "validation")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
MAX_PROBLEMS = 100
BATCH = 512
# A `.json` list is parsed whole: past this size it should be JSON Lines.
MAX_JSON_LIST_BYTES = 512 * 1024 * 1024


class DatasetError(ValueError):
    """Rows that cannot be used; `problems` name each one's line (or row) and field.
    Nothing was written or registered."""

    def __init__(self, problems: list[str], *, source: str = ""):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        count = sum(1 for p in self.problems if not p.startswith("... and "))
        head = f"{where}{count} problem{'s' if count != 1 else ''}, nothing imported"
        super().__init__(head + ":\n" + "\n".join(self.problems))


class _Problems:
    """Collects problems, keeping the first MAX_PROBLEMS and counting the rest."""

    def __init__(self, limit: int = MAX_PROBLEMS):
        self.items: list[str] = []
        self.more = 0
        self.limit = limit

    def add(self, text: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(text)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def as_list(self) -> list[str]:
        return self.items + ([f"... and {self.more} more"] if self.more else [])

    def raise_if_any(self, source: str = "") -> None:
        if self.items:
            raise DatasetError(self.as_list(), source=source)


def _check_cancel(reporter: Reporter) -> None:
    if reporter.cancelled():
        raise JobCancelled()


# --- reading sources ------------------------------------------------------------------------

@dataclass
class Source:
    """A source file read into Arrow, and where each row came from."""

    name: str
    kind: str  # json | csv | parquet | text
    table: Any  # datasets.Dataset
    lines: list[int] | None  # the physical line of each row, when the file has lines

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def where(self, index: int) -> str:
        return f"line {self.lines[index]}" if self.lines is not None else f"row {index + 1}"

    def __len__(self) -> int:
        return len(self.table)


def source_kind(path: Path) -> str:
    kind = SOURCE_KINDS.get(Path(path).suffix.lower())
    if kind is None:
        raise DatasetError([f"{Path(path).name}: a dataset is a .jsonl, .json, .csv, .parquet or "
                            ".txt file"])
    return kind


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _lone_surrogate(raw: bytes, value: Any) -> bool:
    """Whether a parsed row holds a lone surrogate (a `\\ud800` escape, or its bytes, which
    json lets through): not Unicode text, so nothing can write or show it. Only looked for
    when the raw bytes have such an escape or a 0xED byte."""
    if b"\xed" not in raw and b"\\ud" not in raw.lower():
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _displayable(value: Any) -> Any:
    """`value` with lone surrogates shown as U+FFFD, for a preview."""
    text = json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
    return json.loads(text.decode("utf-8", errors="replace"))


SURROGATE_PROBLEM = "a lone surrogate (a \\ud800-\\udfff escape) is not Unicode text"


def _is_json_list(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


class _TypeCheck:
    """Arrow needs one type per column: names the row where a column changes type."""

    def __init__(self, problems: _Problems):
        self.first: dict[str, tuple[str, str]] = {}
        self.problems = problems

    def check(self, record: dict, where: str) -> None:
        for key, value in record.items():
            kind = _json_type(value)
            if kind == "null":
                continue
            seen = self.first.setdefault(key, (kind, where))
            if seen[0] != kind:
                self.problems.add(f"{where}: {key!r} is {kind} here but {seen[0]} on {seen[1]}")


def _json_lines_pass(path: Path) -> list[int]:
    """Line numbers of the rows; every malformed line named."""
    problems, lines = _Problems(), []
    types = _TypeCheck(problems)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"line {number}"
            try:
                value = json_loads(raw, source=where, max_bytes=None)
            except UnicodeDecodeError:
                problems.add(f"{where}: not UTF-8 text")
                continue
            except ValueError as exc:
                problems.add(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)} at column "
                             f"{getattr(exc, 'colno', '?')})")
                continue
            if not isinstance(value, dict):
                problems.add(f"{where}: a row is a JSON object, not {_json_type(value)}")
                continue
            if _lone_surrogate(raw, value):
                problems.add(f"{where}: {SURROGATE_PROBLEM}")
                continue
            types.check(value, where)
            lines.append(number)
    problems.raise_if_any(path.name)
    return lines


def _json_list_pass(path: Path) -> None:
    if path.stat().st_size > MAX_JSON_LIST_BYTES:
        raise DatasetError([f"{path.name}: a JSON list over {MAX_JSON_LIST_BYTES >> 20} MB; "
                            "write it as JSON Lines (one row a line)"])
    raw = path.read_bytes()
    try:
        data = json_loads(raw, source=path.name, max_bytes=None)
    except ValueError as exc:
        raise DatasetError([f"line {getattr(exc, 'lineno', '?')}: not valid JSON "
                            f"({getattr(exc, 'msg', exc)})"], source=path.name) from None
    if _lone_surrogate(raw, data):
        raise DatasetError([SURROGATE_PROBLEM], source=path.name)
    problems = _Problems()
    types = _TypeCheck(problems)
    for i, value in enumerate(data):
        if not isinstance(value, dict):
            problems.add(f"row {i + 1}: a row is a JSON object, not {_json_type(value)}")
        else:
            types.check(value, f"row {i + 1}")
    problems.raise_if_any(path.name)


def _utf8_lines(path: Path, problems: _Problems) -> Iterator[tuple[int, str]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                problems.add(f"line {number}: not UTF-8 text")
                continue
            yield number, text


def _csv_pass(path: Path) -> tuple[list[str], list[int]]:
    """(header, first line of each record); records with the wrong number of fields named."""
    problems = _Problems()
    state = {"line": 0}

    def feed() -> Iterator[str]:
        for number, text in _utf8_lines(path, problems):
            state["line"] = number
            yield text

    reader = csv.reader(feed())
    header: list[str] = []
    lines: list[int] = []
    previous_end = 0
    try:
        for record in reader:
            first, previous_end = previous_end + 1, state["line"]
            if not record:
                continue  # a blank line: pandas skips it too
            if not header:
                header = record
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes or any(not c.strip() for c in header):
                    problems.add(f"line {first}: the header needs distinct, non-empty column "
                                 f"names (got {', '.join(header)})")
                continue
            if len(record) != len(header):
                problems.add(f"line {first}: {len(record)} fields, the header has {len(header)}")
                continue
            lines.append(first)
    except csv.Error as exc:
        problems.add(f"line {state['line']}: {exc}")
    if not header and not problems:
        problems.add("the file is empty: a CSV dataset starts with a header row")
    problems.raise_if_any(path.name)
    return header, lines


def _text_pass(path: Path) -> None:
    problems = _Problems()
    for _ in _utf8_lines(path, problems):
        pass
    problems.raise_if_any(path.name)


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def load_source(path: Path, *, cache_dir: Path) -> Source:
    """Read a source file into Arrow (cached under `cache_dir`). DatasetError names every
    malformed line; an empty file is a problem too."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError([f"{path}: no such file"])
    kind = source_kind(path)
    lines: list[int] | None = None
    load_args: dict[str, Any] = {}
    if kind == "json":
        if _is_json_list(path):
            _json_list_pass(path)
        else:
            lines = _json_lines_pass(path)
            if not lines:
                raise DatasetError([f"{path.name}: no rows (the file is empty)"])
    elif kind == "csv":
        header, lines = _csv_pass(path)
        if not lines:
            raise DatasetError([f"{path.name}: no rows below the header"])
        datasets = _quiet_datasets()
        # Every cell as text: no "007" -> 7, no "NA" -> missing.
        load_args = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                     "keep_default_na": False, "na_filter": False, "encoding": "utf-8-sig"}
    elif kind == "text":
        _text_pass(path)
    datasets = _quiet_datasets()
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train",
                                      cache_dir=str(cache_dir), **load_args)
    except Exception as exc:  # Arrow's reader: one error for the file, no line to name
        cause = exc.__cause__ or exc
        raise DatasetError([f"{path.name}: cannot be read as {kind}: {cause}"]) from None
    if kind == "parquet":
        import pyarrow as pa

        try:  # Parquet's reader trusts the file: text that is not UTF-8 fails only when read
            table.data.table.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise DatasetError([f"{path.name}: cannot be read as parquet: {exc}"]) from None
    if kind == "text":
        # One row a line; empty lines separate and are dropped, line numbers kept.
        texts = table["text"]
        keep = [i for i, t in enumerate(texts) if t and t.strip()]
        lines = [i + 1 for i in keep]
        table = table.select(keep)
    if lines is not None and len(lines) != len(table):
        lines = None  # the readers disagree on what a row is: name rows, not lines
    if len(table) == 0:
        raise DatasetError([f"{path.name}: no rows (an empty dataset)"])
    return Source(name=path.name, kind=kind, table=table, lines=lines)


def peek_rows(path: Path, limit: int = 20) -> tuple[list[dict], str]:
    """(the first rows, their source kind), read cheaply for a preview: no Arrow cache,
    only the start of the file. Malformed rows show as `{"(invalid JSON)": ...}`."""
    path = Path(path)
    kind = source_kind(path)
    rows: list[dict] = []
    if kind == "json" and _is_json_list(path):
        if path.stat().st_size <= 64 * 1024 * 1024:
            raw = path.read_bytes()
            try:
                data = json_loads(raw, source=path.name, max_bytes=None)
            except ValueError as exc:
                return [{"(invalid JSON)": str(exc)}], kind
            if _lone_surrogate(raw, data):
                data = _displayable(data)
            rows = [r if isinstance(r, dict) else {"value": r} for r in data[:limit]]
    elif kind == "json":
        with path.open("rb") as fh:
            for raw in fh:
                if len(rows) >= limit:
                    break
                if not raw.strip():
                    continue
                try:
                    value = json_loads(raw, max_bytes=None)
                except ValueError:
                    value = {"(invalid JSON)": raw[:200].decode("utf-8", errors="replace")}
                if _lone_surrogate(raw, value):
                    value = _displayable(value)
                rows.append(value if isinstance(value, dict) else {"value": value})
    elif kind == "csv":
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
            reader = csv.DictReader(fh)
            try:
                for row in reader:
                    if len(rows) >= limit:
                        break
                    rows.append({str(k): v for k, v in row.items() if k is not None})
            except csv.Error as exc:  # a field over csv's limit: line_num counts lines done
                raise DatasetError([f"line {reader.line_num + 1}: {exc}"], source=path.name) from None
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq  # only the first batch is read

        try:
            first = next(pq.ParquetFile(path).iter_batches(batch_size=limit), None)
            rows = first.to_pylist()[:limit] if first is not None else []
            # Shown as text where JSON has no word for a value (binary data, dates).
            rows = json.loads(json.dumps(rows, default=lambda v: repr(v)[:200]))
        except (pa.ArrowException, OSError, ValueError) as exc:  # truncated or not Parquet
            raise DatasetError([f"{path.name}: cannot be read as parquet: {exc}"]) from None
    else:
        with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
            for line in fh:
                if len(rows) >= limit:
                    break
                if line.strip():
                    rows.append({"text": line.rstrip("\r\n")})
    return rows, kind


# --- formats and mapping ----------------------------------------------------------------------

@dataclass
class Layout:
    """How a source's columns feed one format: field -> column, and the columns kept as
    extra keys."""

    format: str
    columns: dict[str, str]
    extras: list[str] = field(default_factory=list)


def mapping_check(mapping: dict[str, str] | None, columns: Iterable[str]) -> dict[str, str]:
    """{source column: canonical field}, checked against the source's columns."""
    mapping = dict(mapping or {})
    columns = list(columns)
    problems = []
    targets: dict[str, str] = {}
    for column, target in mapping.items():
        if target not in FIELDS:
            problems.append(f"--map {column}={target}: {target!r} is not a field; the fields are "
                            + ", ".join(FIELDS))
        elif column not in columns:
            problems.append(f"--map {column}={target}: no column {column!r} in the source "
                            f"(columns: {', '.join(columns) or 'none'})")
        elif target in targets:
            problems.append(f"--map {column}={target}: {target!r} is mapped from "
                            f"{targets[target]!r} already")
        else:
            targets[target] = column
    if problems:
        raise DatasetError(problems)
    return mapping


def _field_columns(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """field -> the column it reads: mapped ones, else a column with the field's name that
    is not mapped to something else."""
    out = {target: column for column, target in mapping.items()}
    for column in columns:
        if column in FIELDS and column not in mapping and column not in out:
            out[column] = column
    return out


def _list_kind(values: Iterable[Any]) -> str | None:
    """"sharegpt" or "messages" from the first non-empty list of turns."""
    for value in values:
        if isinstance(value, list) and value and isinstance(value[0], dict):
            keys = {k for k, v in value[0].items() if v is not None}
            if {"from", "value"} <= keys:
                return "sharegpt"
            if {"role", "content"} <= keys:
                return "messages"
    return None


def detect_format(rows_or_path, *, mapping: dict[str, str] | None = None) -> str:
    """The format of a source (a path) or of some rows (dicts), after `mapping`."""
    if isinstance(rows_or_path, str | os.PathLike):
        rows, _ = peek_rows(Path(rows_or_path), limit=50)
    else:
        rows = list(rows_or_path)[:50]
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    mapping = dict(mapping or {})
    fields = _field_columns(columns, {c: t for c, t in mapping.items() if c in columns})
    for list_field in ("messages", "conversations"):
        if list_field in fields:
            kind = _list_kind(row.get(fields[list_field]) for row in rows)
            if kind:
                return kind
            return "messages" if list_field == "messages" else "sharegpt"
    if {"instruction", "output"} <= fields.keys():
        return "alpaca"
    if {"text", "label"} <= fields.keys():
        return "classification"
    if "text" in fields:
        return "text"
    raise DatasetError([
        f"cannot tell the format from the columns {', '.join(columns) or '(none)'}: alpaca needs "
        "instruction and output, sharegpt conversations, messages messages, text text, "
        "classification text and label; map a column with --map COLUMN=FIELD"])


def layout_for(fmt: str, columns: list[str], mapping: dict[str, str]) -> Layout:
    """Which column feeds each field of `fmt`; DatasetError when a required one is absent."""
    if fmt not in FORMAT_FIELDS:
        raise DatasetError([f"format {fmt!r} is not one of {', '.join(FORMATS)}"])
    fields = _field_columns(columns, mapping)
    required, optional = FORMAT_FIELDS[fmt]
    if fmt in ("sharegpt", "messages"):
        # Either list column name carries either shape: many files call role/content
        # turns "conversations".
        list_column = fields.get(required[0]) or fields.get(
            "messages" if required[0] == "conversations" else "conversations")
        if list_column:
            fields[required[0]] = list_column
    missing = [f for f in required if f not in fields]
    if missing:
        raise DatasetError([
            f"no column {f!r} in the source (columns: {', '.join(columns)}); a {fmt} dataset "
            f"needs {', '.join(required)}: map one with --map COLUMN={f}" for f in missing])
    used = {f: fields[f] for f in (*required, *optional) if f in fields}
    # A column with a field's name that another column was mapped over is dropped, not
    # kept: it would collide with the canonical key.
    shadowed = {t for c, t in mapping.items() if t != c}
    extras = [c for c in columns if c not in used.values() and c not in shadowed]
    return Layout(format=fmt, columns=used, extras=extras)


# --- rows ----------------------------------------------------------------------------------------

def _text(value: Any, name: str, problems: list[str], *, required: bool = True) -> str | None:
    if value is None:
        if required:
            problems.append(f"missing column {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"{name!r} is {_json_type(value)}, not text")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{name!r} is not a finite number")
        return None
    text = value if isinstance(value, str) else str(value)
    if required and not text.strip():
        problems.append(f"empty {name!r}")
        return None
    return text


def _drop_nulls(value: Any) -> Any:
    # Arrow gives every row every key of the column's struct, null where a row had none.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """An Arrow value as JSON can hold it: dates, times and decimals as text; binary data
    (or anything else JSON has no word for) is a TypeError naming its type."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta | Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} data, which a JSON row cannot hold")


def _turns(value: Any, name: str, role_key: str, text_key: str, roles: dict[str, str],
           problems: list[str]) -> list[dict] | None:
    if value is None:
        problems.append(f"missing column {name!r}")
        return None
    if not isinstance(value, list) or not value:
        problems.append(f"{name!r} is {'an empty list' if value == [] else _json_type(value)}, "
                        f"not a list of {{{role_key}, {text_key}}}")
        return None
    out, before = [], len(problems)
    for i, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            problems.append(f"{name}[{i}] is {_json_type(turn)}, not {{{role_key}, {text_key}}}")
            continue
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in roles:  # a list or object is no role either
            problems.append(f"{name}[{i}]: {role_key} {role!r} is not one of {', '.join(roles)}")
            continue
        content = turn.get(text_key)
        if content is None:
            problems.append(f"{name}[{i}] ({role}): missing {text_key!r}")
        elif not isinstance(content, str):
            problems.append(f"{name}[{i}] ({role}): {text_key!r} is {_json_type(content)}, not text")
        elif not content.strip():
            problems.append(f"{name}[{i}] ({role}): empty {text_key!r}")
        else:
            out.append({"role": roles[role], "content": content})
    if len(problems) == before and not any(m["role"] == "assistant" for m in out):
        problems.append(f"{name!r} has no assistant turn to learn from")
    return out if len(problems) == before else None


def normalize_row(record: dict, layout: Layout, *, labels: set[str] | None = None
                  ) -> tuple[dict | None, list[str]]:
    """(the canonical row, or None, and its problems without the line prefix)."""
    problems: list[str] = []
    cols = layout.columns

    def get(name: str) -> Any:
        return record.get(cols[name]) if name in cols else None

    fmt = layout.format
    row: dict[str, Any]
    if fmt == "alpaca":
        system = _text(get("system"), cols.get("system", "system"), problems, required=False)
        instruction = _text(get("instruction"), cols["instruction"], problems)
        extra = _text(get("input"), cols.get("input", "input"), problems, required=False)
        output = _text(get("output"), cols["output"], problems)
        if problems:
            return None, problems
        user = instruction + ("\n\n" + extra if extra and extra.strip() else "")
        messages = ([{"role": "system", "content": system}] if system and system.strip() else [])
        row = {"messages": [*messages, {"role": "user", "content": user},
                            {"role": "assistant", "content": output}]}
    elif fmt in ("sharegpt", "messages"):
        list_field = FORMAT_FIELDS[fmt][0][0]
        if fmt == "sharegpt":
            turns = _turns(get(list_field), cols[list_field], "from", "value", SHAREGPT_ROLES, problems)
        else:
            turns = _turns(get(list_field), cols[list_field], "role", "content",
                           {r: r for r in ROLES}, problems)
        system = _text(get("system"), cols.get("system", "system"), problems, required=False)
        if problems:
            return None, problems
        if system and system.strip() and not (turns and turns[0]["role"] == "system"):
            turns = [{"role": "system", "content": system}, *turns]
        row = {"messages": turns}
    else:
        text = _text(get("text"), cols["text"], problems)
        row = {"text": text}
        if fmt == "classification":
            label = _text(get("label"), cols["label"], problems)
            if label is not None:
                label = label.strip()
                if labels is not None and label not in labels:
                    problems.append(f"label {label!r} is not one of {', '.join(sorted(labels))}")
            row["label"] = label
        if problems:
            return None, problems
    for column in layout.extras:
        value = record.get(column)
        if value is not None and column not in row:
            try:
                row[column] = _plain(_drop_nulls(value))
            except TypeError as exc:
                problems.append(f"column {column!r} holds {exc}")
    return (None if problems else row), problems


def task_of_row(row: dict) -> str:
    if "messages" in row:
        return "chat"
    return "classification" if "label" in row else "text"


# --- a model's tokenizer and chat template ------------------------------------------------------

def _jinja_env():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    # As transformers renders chat templates: a sandbox (templates come from the Hub and are
    # untrusted), trimmed blocks, loop controls, and the same helpers.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _read_json(path: Path) -> dict:
    if not path.is_file() or path.stat().st_size > 50 * 1024 * 1024:
        return {}
    try:
        data = json_loads(path.read_text(encoding="utf-8"), source=path.name, max_bytes=None)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template_text(model_folder: Path) -> str | None:
    """The model's chat template: chat_template.jinja, chat_template.json, or the
    tokenizer_config.json entry (a string, or a list of named ones: "default")."""
    folder = Path(model_folder)
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    for candidate in (_read_json(folder / "chat_template.json").get("chat_template"),
                      _read_json(folder / "tokenizer_config.json").get("chat_template")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
        if isinstance(candidate, list):
            named = {t.get("name"): t.get("template") for t in candidate if isinstance(t, dict)}
            chosen = named.get("default") or next(iter(named.values()), None)
            if isinstance(chosen, str):
                return chosen
    return None


def _special_tokens(model_folder: Path) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        for key, value in _read_json(Path(model_folder) / name).items():
            if isinstance(value, dict):
                value = value.get("content")
            if key.endswith("_token") and isinstance(value, str):
                tokens[key] = value
    return tokens


def model_max_length(model_folder: Path) -> int | None:
    """config.json's max_position_embeddings, else a real tokenizer model_max_length."""
    folder = Path(model_folder)
    config = _read_json(folder / "config.json")
    for source in (config, config.get("text_config") or {}):
        value = source.get("max_position_embeddings") if isinstance(source, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    value = _read_json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(value, int) and 0 < value < 10_000_000:
        return value
    return None


class ModelTokens:
    """Counts tokens as the model would see a row: chat rows through its chat template,
    text through the tokenizer with its special tokens. tokenizers + jinja2 only."""

    def __init__(self, model_folder: Path):
        from tokenizers import Tokenizer

        self.folder = Path(model_folder)
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise DatasetError([f"{self.folder.name}: no tokenizer.json, so its tokens cannot be "
                                "counted"])
        self.tokenizer = Tokenizer.from_file(str(path))
        # A saved tokenizer may truncate or pad (MiniLM's does, to 128): count real lengths.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.template_text = chat_template_text(self.folder)
        self.special = _special_tokens(self.folder)
        self._template = None

    @property
    def has_template(self) -> bool:
        return self.template_text is not None

    def render(self, messages: list[dict]) -> str:
        """The chat template applied to messages; ValueError when there is none or it refuses."""
        import jinja2

        if self.template_text is None:
            raise ValueError(f"{self.folder.name} has no chat template")
        if self._template is None:
            self._template = _jinja_env().from_string(self.template_text)
        try:
            return self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=False, **self.special)
        except jinja2.TemplateError as exc:
            raise ValueError(f"the chat template refuses it: {exc}") from None

    def count(self, rows: list[dict], *, plain_chat: bool = False) -> list[int | str]:
        """Token count of each row, or a message where the template refuses it. With
        `plain_chat`, chat rows without a template count as `role: content` lines."""
        texts: list[str | None] = []
        special: list[bool] = []
        errors: dict[int, str] = {}
        for i, row in enumerate(rows):
            if "messages" in row:
                special.append(False)  # the template writes the special tokens itself
                if self.template_text is None and plain_chat:
                    texts.append("\n".join(f"{m['role']}: {m['content']}" for m in row["messages"]))
                    continue
                try:
                    texts.append(self.render(row["messages"]))
                except ValueError as exc:
                    errors[i] = str(exc)
                    texts.append(None)
            else:
                special.append(True)
                texts.append(str(row.get("text", "")))
        counts: list[int | str] = [0] * len(rows)
        for flag in (True, False):
            idx = [i for i, t in enumerate(texts) if t is not None and special[i] == flag]
            if idx:
                encoded = self.tokenizer.encode_batch([texts[i] for i in idx], add_special_tokens=flag)
                for i, enc in zip(idx, encoded, strict=True):
                    counts[i] = len(enc.ids)
        for i, message in errors.items():
            counts[i] = message
        return counts


def chat_preview(row: dict, model_folder: Path) -> str:
    """One row as the model sees it: the chat template applied (text rows as they are).
    Needs only jinja2: cheap enough for a page."""
    if "messages" not in row:
        return str(row.get("text", ""))
    folder = Path(model_folder)
    template = chat_template_text(folder)
    if template is None:
        raise ValueError(f"{folder.name} has no chat template")
    import jinja2

    try:
        return _jinja_env().from_string(template).render(
            messages=row["messages"], tools=None, documents=None, add_generation_prompt=False,
            **_special_tokens(folder))
    except jinja2.TemplateError as exc:
        raise ValueError(f"the chat template refuses this row: {exc}") from None


# --- preparing --------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _AtomicJsonl:
    """Writes rows to a temporary name beside `dest`, hashing as it goes; `commit` renames."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        self.fh = self.tmp.open("wb")
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        self.fh.write(data)
        self.digest.update(data)
        self.count += 1

    def commit(self) -> str:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.dest)
        return self.digest.hexdigest()

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def write_json_atomic(dest: Path, data: dict) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def split_indices(count: int, *, seed: int, validation_fraction: float) -> set[int]:
    """The rows that go to validation: a seeded sample, the same for the same inputs. At
    least one row each side once there are two rows and a fraction above zero."""
    if not 0 <= validation_fraction < 1:
        raise DatasetError([f"validation fraction {validation_fraction} is not in [0, 1)"])
    wanted = round(count * validation_fraction)
    if validation_fraction > 0 and count >= 2:
        wanted = min(max(1, wanted), count - 1)
    elif count < 2:
        wanted = 0
    return set(random.Random(seed).sample(range(count), wanted))  # noqa: S311 - a split, not a secret


def _length_problem(count: int | str, max_length: int | None) -> str | None:
    if isinstance(count, str):
        return count
    if max_length is not None and count > max_length:
        return f"{count} tokens, over the limit of {max_length}"
    return None


@dataclass
class Prepared:
    card: dict
    key: str  # what makes two imports the same: the rows written and how they were mapped
    folder: Path


def prepare_dataset(source: Path, dest: Path, *, cache_dir: Path, fmt: str | None = None,
                    mapping: dict[str, str] | None = None, seed: int = 0,
                    validation_fraction: float = 0.1, labels: Iterable[str] | None = None,
                    tokens: ModelTokens | None = None, max_length: int | None = None,
                    source_name: str | None = None, reporter: Reporter | None = None) -> Prepared:
    """Read, map, check every row, split and write `dest` (a new or empty folder):
    train.jsonl, validation.jsonl and dataset.json, each written to a temporary name and
    renamed. DatasetError lists every bad row by line; then nothing is left in `dest`.

    With `tokens` (a model's tokenizer), rows longer than `max_length` (default: the
    model's) are problems too."""
    reporter = reporter or NullReporter()
    source = Path(source)
    if not 0 <= validation_fraction < 1:
        raise DatasetError([f"validation fraction {validation_fraction} is not in [0, 1)"])
    label_set = {str(label).strip() for label in labels} if labels is not None else None
    if label_set is not None and (not label_set or "" in label_set):
        raise DatasetError(["the label set needs at least one non-empty label"])
    if tokens is not None and max_length is None:
        max_length = model_max_length(tokens.folder)
    reporter.log(f"reading {source.name}")
    src = load_source(source, cache_dir=cache_dir)
    mapping = mapping_check(mapping, src.columns)
    if fmt is None:
        fmt = detect_format(src.table.select(range(min(50, len(src)))).to_list(), mapping=mapping)
    layout = layout_for(fmt, src.columns, mapping)
    if label_set is not None and fmt != "classification":
        raise DatasetError([f"a label set applies to classification datasets, not {fmt}"])
    reporter.log(f"{len(src)} rows, format {fmt}")

    dest.mkdir(parents=True, exist_ok=True)
    total = len(src)
    validation = split_indices(total, seed=seed, validation_fraction=validation_fraction)
    writers = {"train": _AtomicJsonl(dest / "train.jsonl"),
               "validation": _AtomicJsonl(dest / "validation.jsonl")}
    problems = _Problems()
    seen_labels: set[str] = set()
    no_template_said = False
    try:
        index = 0
        for batch in src.table.iter(batch_size=BATCH):
            _check_cancel(reporter)
            keys = list(batch)
            records = [dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True)]
            good: list[tuple[int, dict]] = []
            for record in records:
                row, row_problems = normalize_row(record, layout, labels=label_set)
                for p in row_problems:
                    problems.add(f"{src.where(index)}: {p}")
                if row is not None:
                    good.append((index, row))
                index += 1
            if tokens is not None and good:
                if not tokens.has_template and "messages" in good[0][1]:
                    if not no_template_said:
                        problems.add(f"{tokens.folder.name} has no chat template, so chat rows "
                                     "cannot be checked against it")
                        no_template_said = True
                else:
                    for (i, _), count in zip(good, tokens.count([r for _, r in good]), strict=True):
                        problem = _length_problem(count, max_length)
                        if problem:
                            problems.add(f"{src.where(i)}: {problem}")
            if not problems:
                for i, row in good:
                    if "label" in row:
                        seen_labels.add(row["label"])
                    writers["validation" if i in validation else "train"].write(row)
            reporter.step(index, total)
        problems.raise_if_any(src.name)
        hashes = {name: w.commit() for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.discard()
        for name in ("train.jsonl", "validation.jsonl"):
            (dest / name).unlink(missing_ok=True)
        raise
    task = TASK_OF_FORMAT[fmt]
    card: dict[str, Any] = {
        "schema": SCHEMA, "task": task, "format": fmt, "mapping": mapping,
        "rows": {name: w.count for name, w in writers.items()},
    }
    if task == "classification":
        card["labels"] = sorted(label_set if label_set is not None else seen_labels)
    card.update({
        "seed": seed, "validation_fraction": validation_fraction,
        "source": {"name": source_name or source.name, "sha256": _sha256_file(source),
                   "bytes": source.stat().st_size},
    })
    write_json_atomic(dest / "dataset.json", card)
    key_data = {"train": hashes["train"], "validation": hashes["validation"], "format": fmt,
                "mapping": mapping, "labels": card.get("labels")}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()
    return Prepared(card=card, key=key, folder=dest)


def preview_source(path: Path, *, fmt: str | None = None, mapping: dict[str, str] | None = None,
                   labels: Iterable[str] | None = None, limit: int = 10) -> dict:
    """What an import would make of the first rows, cheaply (no Arrow, no tokenizer):
    {columns, rows, format, rows_out, problems}. Problems name the row in the preview."""
    rows, kind = peek_rows(Path(path), limit=limit)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    out: dict[str, Any] = {"columns": columns, "rows": rows, "kind": kind, "format": fmt,
                           "detected": None, "rows_out": [], "problems": []}
    try:
        mapping = mapping_check(mapping, columns)
        out["detected"] = detect_format(rows, mapping=mapping) if rows else None
        fmt = fmt or out["detected"]
        out["format"] = fmt
        if fmt is None:
            out["problems"].append("the file holds no rows")
            return out
        layout = layout_for(fmt, columns, mapping)
    except DatasetError as exc:
        out["problems"].extend(exc.problems)
        return out
    label_set = {str(label).strip() for label in labels} if labels else None
    for i, record in enumerate(rows, 1):
        row, problems = normalize_row(record, layout, labels=label_set)
        out["problems"].extend(f"row {i}: {p}" for p in problems)
        if row is not None:
            out["rows_out"].append(row)
    return out


# --- reading a prepared dataset ---------------------------------------------------------------------

def read_card(dataset_folder: Path) -> dict:
    card = _read_json(Path(dataset_folder) / "dataset.json")
    if card.get("schema") != SCHEMA:
        raise DatasetError([f"{dataset_folder}: no {SCHEMA} dataset.json"])
    return card


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, row) of a canonical JSONL file."""
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if raw.strip():
                yield number, json_loads(raw, source=f"{Path(path).name} line {number}", max_bytes=None)


def head_rows(dataset_folder: Path, split: str = "train", limit: int = 20) -> list[dict]:
    rows = []
    path = Path(dataset_folder) / f"{split}.jsonl"
    if not path.is_file():
        return rows
    for _, row in iter_rows(path):
        if len(rows) >= limit:
            break
        rows.append(row)
    return rows


def _measure(dataset_folder: Path, tokens: ModelTokens, *, plain_chat: bool,
             reporter: Reporter) -> dict[str, list[tuple[int, int | str]]]:
    """Per split: (line, token count or the template's refusal) of every row."""
    out: dict[str, list[tuple[int, int | str]]] = {}
    done = 0
    for split in SPLITS:
        path = Path(dataset_folder) / f"{split}.jsonl"
        measured: list[tuple[int, int | str]] = []
        rows = iter_rows(path) if path.is_file() else iter(())
        while batch := list(itertools.islice(rows, BATCH)):
            _check_cancel(reporter)
            counts = tokens.count([r for _, r in batch], plain_chat=plain_chat)
            measured.extend((line, c) for (line, _), c in zip(batch, counts, strict=True))
            done += len(batch)
            reporter.step(done)
        out[split] = measured
    return out


def validate_against_model(dataset_folder: Path, model_folder: Path,
                           max_length: int | None = None) -> list[str]:
    """Problems training this dataset on this model would hit, naming split and line: a
    chat dataset on a model without a chat template, rows the template refuses, rows
    longer than `max_length` (default: the model's max_position_embeddings)."""
    folder = Path(dataset_folder)
    card = read_card(folder)
    try:
        tokens = ModelTokens(model_folder)
    except DatasetError as exc:
        return exc.problems
    if card.get("task") == "chat" and not tokens.has_template:
        return [f"{Path(model_folder).name} has no chat template; a chat dataset needs one"]
    if max_length is None:
        max_length = model_max_length(model_folder)
    problems = _Problems()
    for split, measured in _measure(folder, tokens, plain_chat=False, reporter=NullReporter()).items():
        for line, count in measured:
            problem = _length_problem(count, max_length)
            if problem:
                problems.add(f"{split} line {line}: {problem}")
    return problems.as_list()


def _percentile(sorted_values: list[int], q: float) -> int:
    # Nearest rank: a length some row really has.
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _summary(values: list[int], max_length: int | None) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(ordered), "min": ordered[0], "mean": round(sum(ordered) / len(ordered), 2),
            "p50": _percentile(ordered, 50), "p95": _percentile(ordered, 95), "max": ordered[-1],
            "over_max_length": sum(1 for v in ordered if max_length is not None and v > max_length),
            "tokens": sum(ordered)}


def token_stats(dataset_folder: Path, model_folder: Path, *, max_length: int | None = None,
                bins: int = 30, reporter: Reporter | None = None) -> dict:
    """Token lengths per split as the model sees them: count, min, mean, p50, p95, max (and
    rows over max_length), a shared histogram, and the problems validate_against_model
    would name. Chat rows on a model without a template count as `role: content` lines."""
    reporter = reporter or NullReporter()
    folder = Path(dataset_folder)
    card = read_card(folder)
    tokens = ModelTokens(model_folder)
    if max_length is None:
        max_length = model_max_length(model_folder)
    measured = _measure(folder, tokens, plain_chat=True, reporter=reporter)
    problems = _Problems()
    if card.get("task") == "chat" and not tokens.has_template:
        problems.add(f"{Path(model_folder).name} has no chat template; a chat dataset needs one "
                     "(lengths below count role: content lines)")
    lengths: dict[str, list[int]] = {}
    for split, rows in measured.items():
        lengths[split] = [c for _, c in rows if isinstance(c, int)]
        for line, count in rows:
            problem = _length_problem(count, max_length)
            if problem:
                problems.add(f"{split} line {line}: {problem}")
    everything = [v for vs in lengths.values() for v in vs]
    top = max(everything, default=1)
    width = max(1, math.ceil(top / bins))
    edges = [i * width for i in range(bins + 1)]
    histogram = {"edges": edges}
    for split, values in lengths.items():
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, v // width)] += 1
        histogram[split] = counts
    return {"model": Path(model_folder).name, "task": card.get("task"), "max_length": max_length,
            "chat_template": tokens.has_template,
            "splits": {split: _summary(values, max_length) for split, values in lengths.items()},
            "all": _summary(everything, max_length), "histogram": histogram,
            "problems": problems.as_list()}


COLORS = {"train": (37, 99, 235), "validation": (234, 88, 12)}


def length_histogram_png(stats: dict, dest: Path, *, width: int = 640, height: int = 320) -> Path:
    """The token-length histogram of `token_stats` as a PNG (Pillow; written atomically):
    train and validation side by side in each bin, the model's max length in red."""
    from PIL import Image, ImageDraw, ImageFont

    hist = stats["histogram"]
    edges = hist["edges"]
    bins = len(edges) - 1
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 48, 12, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([c for split in SPLITS for c in hist.get(split, [])] or [1]) or 1
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(209, 213, 219))
    slot = plot_w / bins
    for b in range(bins):
        for k, split in enumerate(SPLITS):
            count = hist.get(split, [0] * bins)[b]
            if not count:
                continue
            x0 = left + b * slot + k * slot / 2 + 1
            y0 = top + plot_h - count / peak * plot_h
            draw.rectangle([x0, y0, x0 + slot / 2 - 2, top + plot_h], fill=COLORS[split])
    max_length = stats.get("max_length")
    span = edges[-1] or 1
    if max_length is not None and max_length <= span:
        x = left + max_length / span * plot_w
        draw.line([x, top, x, top + plot_h], fill=(220, 38, 38), width=2)
        draw.text((x + 3, top + 2), f"max {max_length}", fill=(220, 38, 38), font=font)
    draw.text((left, height - bottom + 4), "0", fill=(75, 85, 99), font=font)
    draw.text((left + plot_w - 40, height - bottom + 4), f"{edges[-1]} tokens", fill=(75, 85, 99),
              font=font)
    draw.text((4, top), str(peak), fill=(75, 85, 99), font=font)
    draw.text((4, top + plot_h - 10), "0", fill=(75, 85, 99), font=font)
    x = left
    for split in SPLITS:
        summary = stats["splits"].get(split, {})
        label = f"{split} ({summary.get('count', 0)})"
        draw.rectangle([x, 6, x + 10, 16], fill=COLORS[split])
        draw.text((x + 14, 5), label, fill=(17, 24, 39), font=font)
        x += 24 + int(draw.textlength(label, font=font))
    draw.text((left, height - 14), f"tokens per row, {stats.get('model', '')}", fill=(75, 85, 99),
              font=font)
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, dest)
    return dest
