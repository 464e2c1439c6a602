"""Fuzzing dataset reading (`apps/training/engine/dataset_prep.py`): JSON Lines, JSON lists,
CSV, Parquet and text files built from random rows (wrong types, missing and extra fields,
turns that are not turns, NULs, invalid UTF-8, huge lines, broken quoting, truncated
Parquet), read through `preview_source` (the mapping page), `load_source` and
`prepare_dataset` (the import) with random formats, mappings and label sets.

The property: an answer or DatasetError whose problems name the line, row or file — never
another exception — within a bounded time; and a refused import leaves nothing in its
destination folder.

Budget: 1,600 derandomized cases in two tests (times AUDOBON_FUZZ_EXAMPLES, see
tests/reliability/conftest.py); reading through Arrow costs tens of milliseconds a case,
so that test has the smallest share.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from apps.training.engine.dataset_prep import (
    FIELDS,
    FORMATS,
    DatasetError,
    load_source,
    prepare_dataset,
    preview_source,
)

from .conftest import fuzz

KEYS = [*FIELDS, "role", "content", "from", "value", "id", "", " ", "text ", "Text", "é", "a\x00b"]
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "", None, 1, ["user"], {"r": 1}]
SECONDS = 5.0


def scalar(rng: random.Random):
    return rng.choice([None, True, False, 0, -1, 7, 2**63, -(2**70), 1.5, float("inf"), float("nan"),
                       "", " ", "hello", "\x00", "é\u2028", "\ud800",
                       "x" * rng.choice([1, 300, 70_000, 140_000])])


def turn(rng: random.Random, hostile: float):
    if rng.random() > hostile:
        return {"role": rng.choice(["user", "assistant"]), "from": rng.choice(["human", "gpt"]),
                "content": "a turn", "value": "a turn"}
    if rng.random() < 0.15:
        return scalar(rng)
    keys = rng.sample(["role", "content", "from", "value", "extra"], rng.randint(0, 4))
    return {k: rng.choice(ROLES) if k in ("role", "from") else
            rng.choice([scalar(rng), "an answer", "a question", [1], {"t": "x"}]) for k in keys}


def value(rng: random.Random, key: str, hostile: float):
    r = rng.random()
    if key in ("messages", "conversations") and r < 0.7:
        turns = [turn(rng, hostile) for _ in range(rng.randint(0 if hostile else 1, 4))]
        return turns + ([{"role": "assistant", "from": "gpt", "content": "ok", "value": "ok"}]
                        if rng.random() > hostile else [])
    if r < 0.5 or rng.random() > hostile:
        return rng.choice(["what is 2+2?", "4", "positive", "negative", "some text"])
    if r < 0.85:
        return scalar(rng)
    return rng.choice([[], [1, "a"], {"nested": {"deep": [1]}}, [[[]]]])


def record(rng: random.Random, base: list[str], hostile: float) -> dict:
    """A row of the `base` columns; with probability `hostile` per choice, something wrong."""
    keys = [k for k in base if rng.random() >= hostile * 0.15]
    if rng.random() < hostile:
        keys += rng.sample(KEYS, rng.randint(0, 2))
    return {k: value(rng, k, hostile) for k in keys}


BASES = [["instruction", "output"], ["instruction", "input", "output", "system"], ["conversations"],
         ["messages"], ["text"], ["text", "label"], ["prompt", "completion"], []]


def json_safe(obj):
    return obj


def utf8(text: str) -> bytes:
    """Lone surrogates as the invalid UTF-8 some writers produce."""
    return text.encode("utf-8", errors="surrogatepass")


def jsonl_bytes(rng: random.Random, rows: list[dict]) -> bytes:
    lines = []
    for row in rows:
        r = rng.random()
        if r < 0.08:
            lines.append(rng.choice([b"\xff\xfe not utf-8", b"{\"text\": \"\xc3\"}", b"{\"text\": 1",
                                     b"[1, 2]",
                                     b"null", b"\x00\x00", b"{\"text\": \"a\"} trailing", b"   ",
                                     b"{\"text\": " + b"[" * 5000 + b"]" * 5000 + b"}"]))
        else:
            lines.append(utf8(json.dumps(row, ensure_ascii=rng.random() < 0.5)))
    return b"\n".join(lines) + rng.choice([b"", b"\n", b"\r\n"])


def csv_bytes(rng: random.Random, rows: list[dict]) -> bytes:
    header = list(dict.fromkeys(k for row in rows for k in row)) or ["text"]
    if rng.random() < 0.1:
        header.append(rng.choice(header))  # a repeated column
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        cells = [row.get(k) for k in header]
        if rng.random() < 0.1:
            cells = cells[:rng.randint(0, len(cells))] + ["extra"] * rng.randint(0, 2)
        writer.writerow(["" if c is None else c if isinstance(c, str) else json.dumps(c) for c in cells])
    text = out.getvalue().encode("utf-8", errors="surrogatepass")
    if rng.random() < 0.15:
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice([b"\xff", b"\x00", b'"', b'\n"unclosed', b"\r"]) + text[at:]
    return text


def parquet_bytes(rng: random.Random, rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        table = pa.table({"text": [json.dumps(r) for r in rows]})
    if rng.random() < 0.2:  # columns JSON has no word for
        table = table.append_column("blob", pa.array([b"\x00\xff"] * len(table), pa.binary()))
    if rng.random() < 0.1:
        table = table.append_column("when", pa.array([0] * len(table), pa.timestamp("s")))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    data = sink.getvalue()
    if rng.random() < 0.25:
        data = data[:rng.randint(0, len(data))]
    elif rng.random() < 0.2:
        at = rng.randrange(len(data))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    return data


def text_bytes(rng: random.Random, rows: list[dict]) -> bytes:
    lines = [str(row.get("text", "")).encode("utf-8", errors="surrogatepass") for row in rows]
    if rng.random() < 0.2:
        lines.append(rng.choice([b"\xff\xfe", b"\x00", b"a" * 200_000]))
    return b"\n".join(lines)


def json_list_bytes(rng: random.Random, rows: list[dict]) -> bytes:
    data = utf8(json.dumps(rows, ensure_ascii=rng.random() < 0.5))
    if rng.random() < 0.3:
        data = data[:rng.randint(1, len(data))]
    return rng.choice([b"", b"\xef\xbb\xbf", b"  \n"]) + data


WRITERS = {".jsonl": jsonl_bytes, ".json": json_list_bytes, ".csv": csv_bytes, ".parquet": parquet_bytes,
           ".txt": text_bytes}
cases = st.tuples(st.sampled_from(sorted(WRITERS)), st.integers(0, 2**32 - 1), st.integers(0, 12),
                  st.sampled_from(range(len(BASES))), st.sampled_from([0.0, 0.0, 0.02, 0.2, 1.0]))
formats = st.sampled_from([None, None, None, None, *FORMATS, "nonsense"])
mappings = st.one_of(st.none(), st.none(), st.none(),
                     st.dictionaries(st.sampled_from([*KEYS, "prompt", "completion", "nope"]),
                                                st.sampled_from([*FIELDS, "bogus"]), max_size=3))
label_sets = st.one_of(st.none(), st.none(), st.none(),
                       st.lists(st.sampled_from(["positive", "negative", "", " x ", "4"]),
                                           max_size=3))


def make_file(folder: Path, case) -> Path:
    suffix, seed, count, base, hostile = case
    rng = random.Random(seed)
    rows = [record(rng, BASES[base], hostile) for _ in range(count)]
    path = folder / f"source{suffix}"
    path.write_bytes(WRITERS[suffix](rng, rows))
    return path


def problems_are_named(err: DatasetError) -> None:
    assert err.problems and all(isinstance(p, str) and p for p in err.problems), err.problems
    event(f"refused: {err.problems[0][:25]}")


@fuzz(1200)
@given(case=cases, fmt=formats, mapping=mappings, labels=label_sets)
# found: TypeError (a list as a role)
@example(case=(".json", 0, 2, 0, 1.0), fmt=None, mapping=None, labels=None)
@example(case=(".parquet", 1, 0, 0, 1.0), fmt=None, mapping=None, labels=None)  # found: ArrowInvalid
@example(case=(".json", 2_672_483_184, 3, 0, 1.0), fmt=None, mapping=None, labels=None)  # found: a surrogate
@example(case=(".parquet", 0, 5, 1, 1.0), fmt=None, mapping=None, labels=None)  # found: bytes in a row
@example(case=(".jsonl", 0, 1, 3, 1.0), fmt=None, mapping=None, labels=None)
def test_fuzz_preview(tmp_path, case, fmt, mapping, labels):
    """The mapping page's preview: what it shows or its problems, never an exception."""
    path = make_file(tmp_path, case)
    started = time.monotonic()
    try:
        out = preview_source(path, fmt=fmt, mapping=mapping, labels=labels, limit=10)
    except DatasetError as err:
        problems_are_named(err)
        return
    finally:
        assert time.monotonic() - started < SECONDS
    # What the page renders: the rows as cells, the canonical rows as JSON, all as UTF-8.
    json.dumps([out["rows"], out["rows_out"], out["problems"]], ensure_ascii=False, default=str).encode()
    json.dumps(out["rows_out"], ensure_ascii=False).encode()
    assert all(isinstance(p, str) for p in out["problems"])
    event("previewed" if not out["problems"] else "previewed with problems")


@fuzz(400)
@given(case=cases, fmt=formats, mapping=mappings, labels=label_sets,
       fraction=st.sampled_from([0.0, 0.1, 0.1, 0.1, 0.5, 0.99, -0.1, 1.0]))
# found (with AUDOBON_FUZZ_EXAMPLES=5): a flipped byte made a Parquet string invalid UTF-8,
# which Arrow read without a word and which then raised UnicodeDecodeError mid-import
@example(case=(".parquet", 1704, 5, 5, 1.0), fmt=None, mapping=None, labels=None, fraction=0.0)
def test_fuzz_import(tmp_path_factory, case, fmt, mapping, labels, fraction):
    """load_source and prepare_dataset: rows written, or DatasetError and an empty destination."""
    folder = tmp_path_factory.mktemp("ds")
    path = make_file(folder, case)
    started = time.monotonic()
    try:
        source = load_source(path, cache_dir=folder / "cache")
        assert len(source) > 0
    except DatasetError as err:
        problems_are_named(err)
    dest = folder / "out"
    try:
        prepared = prepare_dataset(path, dest, cache_dir=folder / "cache", fmt=fmt, mapping=mapping,
                                   labels=labels, validation_fraction=fraction)
    except DatasetError as err:
        problems_are_named(err)
        assert not dest.exists() or not any(dest.iterdir()), sorted(p.name for p in dest.iterdir())
    else:
        event("imported")
        rows = prepared.card["rows"]
        assert rows["train"] + rows["validation"] > 0
        for split in ("train", "validation"):
            for line in (dest / f"{split}.jsonl").read_text().splitlines():
                assert isinstance(json.loads(line), dict)
    assert time.monotonic() - started < 3 * SECONDS


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_each_kind_of_file_imports_when_well_formed(tmp_path, suffix):
    """The generators make readable files too: the fuzzing is not all refusals."""
    rows = [{"text": f"row {i}", "label": "positive"} for i in range(6)]
    path = tmp_path / f"good{suffix}"
    data = {".jsonl": lambda: b"\n".join(json.dumps(r).encode() for r in rows),
            ".json": lambda: json.dumps(rows).encode(),
            ".csv": lambda: b"text,label\n" + b"".join(f"{r['text']},{r['label']}\n".encode() for r in rows),
            ".parquet": lambda: _parquet(rows),
            ".txt": lambda: b"\n".join(r["text"].encode() for r in rows)}[suffix]()
    path.write_bytes(data)
    prepared = prepare_dataset(path, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert sum(prepared.card["rows"].values()) == 6


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def test_what_the_fuzzing_found_is_named(tmp_path):
    """Each crash the fuzzing found, now a problem that names its row, field or file."""
    chat = tmp_path / "roles.json"
    chat.write_text(json.dumps([{"messages": [{"role": ["user"], "content": "hi"}]}]))
    out = preview_source(chat)
    assert out["problems"] == ["row 1: messages[1]: role ['user'] is not one of system, user, assistant"]

    cut = tmp_path / "cut.parquet"
    cut.write_bytes(_parquet([{"text": "a"}])[:20])
    with pytest.raises(DatasetError, match=r"cut\.parquet: cannot be read as parquet"):
        preview_source(cut)

    lone = tmp_path / "lone.jsonl"
    lone.write_bytes(b'{"text": "fine"}\n{"text": "bad \\ud800 half"}\n')
    assert preview_source(lone)["rows"][1]["text"].startswith("bad \ufffd")  # shown, replaced
    with pytest.raises(DatasetError) as caught:
        load_source(lone, cache_dir=tmp_path / "cache")
    assert caught.value.problems == [
        "line 2: a lone surrogate (a \\ud800-\\udfff escape) is not Unicode text"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    binary = tmp_path / "blob.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "blob": pa.array([b"\x00", b"\xff"], pa.binary())}), binary)
    assert preview_source(binary)["rows"][0] == {"text": "a", "blob": "b'\\x00'"}
    with pytest.raises(DatasetError,
                       match=r"row 1: column 'blob' holds bytes data, which a JSON row cannot hold"):
        prepare_dataset(binary, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "out").iterdir())

    wide = tmp_path / "wide.csv"
    wide.write_text('text\n"' + "x" * 200_000 + '"\n')
    with pytest.raises(DatasetError, match=r"wide\.csv: 1 problem.*\nline 2: field larger than field limit"):
        preview_source(wide)
