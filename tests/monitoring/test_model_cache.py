"""The heavy worker's model cache: reuse, LRU within the budget, invalidation when the files
change, clear requests across processes, and an `evaluate` job that finds its model loaded."""

import json
import os
import socket
import time

import pytest

from apps.monitoring.engine import modelcache
from apps.monitoring.engine.modelcache import ModelCache, cache_key, request_clear, stats_read


def _sized(n):
    return lambda _value: n


def test_a_second_get_returns_the_same_object_and_counts_a_hit():
    cache = ModelCache(100)
    loads = []

    def load():
        loads.append(1)
        return object()

    first, hit1 = cache.get(("a",), load, nbytes=_sized(10))
    second, hit2 = cache.get(("a",), load, nbytes=_sized(10))
    assert second is first and (hit1, hit2) == (False, True) and len(loads) == 1
    snap = cache.snapshot()
    assert (snap["hits"], snap["misses"], snap["bytes"], snap["hit_rate"]) == (1, 1, 10, 0.5)


def test_the_least_recently_used_is_evicted_within_the_budget():
    cache = ModelCache(100)
    a, _ = cache.get(("a",), object, nbytes=_sized(40))
    cache.get(("b",), object, nbytes=_sized(40))
    assert cache.get(("a",), object, nbytes=_sized(40)) == (a, True)  # a is now the most recent
    cache.get(("c",), object, nbytes=_sized(40))  # 120 > 100: b, the least recent, goes
    assert ("a",) in cache and ("c",) in cache and ("b",) not in cache
    assert cache.bytes == 80 and cache.stats.evictions == 1
    big, hit = cache.get(("huge",), object, nbytes=_sized(500))  # over the budget: not kept
    assert big is not None and not hit and ("huge",) not in cache and cache.bytes == 80


def test_a_budget_of_zero_turns_it_off(monkeypatch):
    cache = ModelCache(0)
    one, _ = cache.get(("a",), object, nbytes=_sized(1))
    two, hit = cache.get(("a",), object, nbytes=_sized(1))
    assert one is not two and not hit and len(cache) == 0
    monkeypatch.setenv(modelcache.ENV_BUDGET, "12x")
    with pytest.raises(modelcache.ModelCacheConfigError, match="AUDOBON_MODEL_CACHE_BYTES"):
        ModelCache()


def test_a_changed_weight_file_is_a_new_key(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    (folder / "config.json").write_text("{}")
    cache = ModelCache(100)
    old, _ = cache.get(cache_key("causal_lm", folder, "auto", "cpu"), object, nbytes=_sized(10))
    assert cache.get(cache_key("causal_lm", folder, "auto", "cpu"), object, nbytes=_sized(10)) == (old, True)
    weights.write_bytes(b"y" * 11)
    new, hit = cache.get(cache_key("causal_lm", folder, "auto", "cpu"), object, nbytes=_sized(10))
    assert new is not old and not hit
    # the same size, a new mtime: also stale
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not cache.get(cache_key("causal_lm", folder, "auto", "cpu"), object, nbytes=_sized(10))[1]
    # and another dtype or device is another entry
    assert cache_key("causal_lm", folder, "auto", "cpu") != cache_key("causal_lm", folder, "bfloat16", "cpu")


def test_stats_are_written_and_a_clear_request_is_honoured(tmp_path):
    stats = tmp_path / "models"
    here = f"{socket.gethostname()}:1:heavy"
    cache = ModelCache(100, stats_dir=stats, name=here, watch=False)
    cache.get(("a",), object, nbytes=_sized(30))
    [seen] = stats_read(stats)
    assert seen["worker"] == here and seen["bytes"] == 30 and seen["entries"] == 1
    time.sleep(0.01)
    request_clear(stats)
    assert cache.get(("b",), object, nbytes=_sized(5))[1] is False  # honoured before this get
    assert ("a",) not in cache and ("b",) in cache
    [seen] = stats_read(stats)
    assert seen["bytes"] == 5 and seen["cleared"] == 1
    # a file left by a process that is gone is not shown, and is removed
    gone = stats / "here_2_heavy.json"
    gone.write_text(json.dumps({"worker": f"{socket.gethostname()}:2:heavy", "pid": 2**22 + 12345}))
    assert [s["worker"] for s in stats_read(stats)] == [here]
    assert not gone.exists()


def test_the_watcher_clears_an_idle_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(modelcache, "WATCH_EVERY_S", 0.05)
    cache = ModelCache(100, stats_dir=tmp_path, name="w")
    try:
        cache.get(("a",), object, nbytes=_sized(30))
        time.sleep(0.01)
        request_clear(tmp_path)
        deadline = time.monotonic() + 20
        while len(cache) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(cache) == 0
    finally:
        cache.close()


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from apps.registry.engine.demo_models import make_llama_family

    return make_llama_family(tmp_path_factory.mktemp("fam"))


@pytest.fixture(scope="module")
def llama(family):
    return family["base"]


@pytest.fixture
def worker_cache():
    cache = ModelCache(2**30)
    modelcache.model_cache_reset(cache)
    yield cache
    modelcache.model_cache_reset(None)


@pytest.mark.django_db
def test_two_evaluate_jobs_in_one_worker_load_the_model_once(llama, worker_cache):
    from apps.monitoring.models import Job
    from apps.monitoring.services import job_submit
    from apps.monitoring.tasks import execute_job

    results = []
    for _ in range(2):
        job = job_submit(kind="evaluate", spec={"model": str(llama), "texts": 3, "max_tokens": 32},
                         enqueue=False)
        execute_job(job.pk)
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error
        results.append(job.result)
    first, second = results
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["loss"] == pytest.approx(first["loss"]) and first["loss"] > 0
    assert second["perplexity"] == pytest.approx(first["perplexity"])
    snap = worker_cache.snapshot()
    assert snap["hits"] == 2 and snap["misses"] == 2  # the model and its tokenizer, once each
    assert snap["entries"] == 2 and snap["bytes"] > 0


@pytest.mark.django_db
def test_evaluate_refuses_a_missing_model_before_queueing():
    from apps.monitoring.models import Job
    from apps.monitoring.services import JobSpecError, job_submit

    with pytest.raises(JobSpecError, match="model"):
        job_submit(kind="evaluate", spec={"model": "no-such-model"}, enqueue=False)
    assert not Job.objects.exists()


def test_a_cached_model_is_frozen_and_an_adapter_leaves_it_alone(llama, tmp_path):
    import copy

    import peft
    import torch

    cache = ModelCache(2**30)
    model, _ = modelcache.load_causal_lm(llama, cache=cache)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    tuned = peft.get_peft_model(copy.deepcopy(model), config)  # what try_it does: a copy
    with torch.no_grad():
        tuned(input_ids=torch.tensor([[1, 2, 3]]))
    again, hit = modelcache.load_causal_lm(llama, cache=cache)
    assert hit and again is model and not isinstance(again, peft.PeftModel)
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())
    assert set(again.state_dict()) == set(before)


def test_validation_takes_the_parents_from_the_cache_and_loads_the_result_afresh(family, worker_cache):
    from apps.assembly.engine.validation import validate

    parents = {"base": family["base"], "late": family["tune-late"]}
    first = validate(family["tune-even"], parents, max_samples=2, max_tokens=32)
    assert worker_cache.snapshot()["entries"] == 2  # the two parents; never the result
    second = validate(family["tune-even"], parents, max_samples=2, max_tokens=32)
    assert worker_cache.stats.hits == 2 and worker_cache.stats.misses == 2
    assert second.losses == pytest.approx(first.losses)


@pytest.mark.django_db
def test_the_evaluate_command_prints_loss_and_perplexity(llama, capsys):
    from django.core.management import call_command

    call_command("evaluate", str(llama), "--texts", "2", "--max-tokens", "16", "--json")
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["loss"] > 0 and out["perplexity"] == pytest.approx(2.718281828 ** out["loss"], rel=1e-6)
    assert out["texts"] == 2 and out["cached"] is False and out["job_seconds"] > 0


@pytest.mark.django_db
def test_cache_clear_models_asks_the_workers_and_waits_for_them(settings, tmp_path, monkeypatch, capsys):
    from django.core.management import call_command

    settings.AUDOBON_HOME = tmp_path
    monkeypatch.setattr(modelcache, "WATCH_EVERY_S", 0.05)
    worker = ModelCache(100, stats_dir=tmp_path / "cache" / "models", name=f"{socket.gethostname()}:7:heavy")
    try:
        worker.get(("m",), object, nbytes=_sized(40), label="demo")
        call_command("cache", "stats", "--json")
        [models] = [r for r in json.loads(capsys.readouterr().out)["caches"] if r["name"] == "models"]
        assert (models["entries"], models["bytes"]) == (1, 40)
        assert models["workers"][0]["models"][0]["label"] == "demo"
        call_command("cache", "clear", "models", "--json")
        [done] = json.loads(capsys.readouterr().out)["cleared"]
        assert (done["workers"], done["entries"], done["bytes"], done["still_held"]) == (1, 1, 40, 0)
        assert len(worker) == 0  # the worker's watcher dropped it
    finally:
        worker.close()


@pytest.mark.django_db
def test_evaluate_on_a_library_dataset_reads_its_validation_rows_first(llama, fresh_library, tmp_path,
                                                                       worker_cache):
    from apps.assets import services as asset_services
    from apps.monitoring.services import JobSpecError, job_submit
    from apps.monitoring.tasks import execute_job
    from apps.training.engine.evaluate import dataset_texts
    from tests.training.builders import write_chat_dataset

    folder = write_chat_dataset(tmp_path / "docs-chat", n_train=6, n_val=3)
    texts = dataset_texts(folder, 4)
    first_val = json.loads((folder / "validation.jsonl").read_text().splitlines()[0])["messages"]
    assert len(texts) == 4 and texts[0] == "\n".join(f"{t['role']}: {t['content']}" for t in first_val)
    asset_services.asset_import(source=folder, kind="dataset", name="docs-chat")
    job = job_submit(kind="evaluate", spec={"model": str(llama), "dataset": "docs-chat", "texts": 3,
                                            "max_tokens": 16}, enqueue=False)
    execute_job(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["dataset"] == "docs-chat@1" and job.result["texts"] == 3 and job.result["loss"] > 0
    with pytest.raises(JobSpecError, match="dataset"):
        job_submit(kind="evaluate", spec={"model": str(llama), "dataset": "nope"}, enqueue=False)
