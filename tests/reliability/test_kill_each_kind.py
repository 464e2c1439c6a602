"""kill -9 of a worker during every job kind: the job becomes interrupted, nothing is lost or
half-registered, and a rerun (or, for fine-tuning, the automatic resume) succeeds.

One home for the module, real `audobon run_worker` processes. The worker is started through a
small launcher that adds one hook: the next job of a kind named in `kill-test/<kind>.json`
stops at a known point (its Nth reporter call, or the Nth call of a named function) and writes
`kill-test/paused-<job id>`. The test waits for that marker, kills the worker's process group
with SIGKILL, and starts a fresh worker: its start-up sweep (`jobs_interrupt_orphans`, the
same service `up` and the monitor call) marks the job interrupted. Retries and continuations
never pause (the plan file is taken by the first job that reads it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apps.assets.engine.store import BlobStore
from apps.monitoring.jobkinds import JOB_KINDS
from tests.proc import REPO, audobon, audobon_env

LAUNCHER = r"""
import json, os, sys, threading, time
from dataclasses import replace
from pathlib import Path

import django
django.setup()
from apps.monitoring.jobkinds import JOB_KINDS

# demo_smollm2 imports the 35k-parameter GGUF instead of the real 135M one: the same code
# (gguf_import), in seconds rather than a minute.
SWAP = os.environ.get("AUDOBON_TEST_SMOLLM2_GGUF")
if SWAP:
    from apps.registry.engine import gguf
    gguf.smollm2_gguf_path = lambda: Path(SWAP)

CONTROL = Path(os.environ["AUDOBON_HOME"]) / "kill-test"


def pause(job, reporter, where):
    try:
        reporter.flush()
    except Exception:
        pass  # inside a transaction that holds the database: the marker is what counts
    marker = CONTROL / f"paused-{job.pk}"
    tmp = CONTROL / f".paused-{job.pk}.tmp"
    tmp.write_text(json.dumps({"kind": job.kind, "where": where, "pid": os.getpid()}))
    os.replace(tmp, marker)
    while True:  # until the test kills this process
        time.sleep(60)


def take_plan(kind):
    plan = CONTROL / f"{kind}.json"
    taken = CONTROL / f"{kind}.taken-{os.getpid()}-{threading.get_ident()}"
    try:
        os.rename(plan, taken)  # atomic: one job takes it
    except FileNotFoundError:
        return None
    return json.loads(taken.read_text())


def resolve(target):
    module, _, path = target.partition(":")
    obj = __import__(module, fromlist=["_"])
    *parents, attr = path.split(".")
    for name in parents:
        obj = getattr(obj, name)
    return obj, attr


def wrapped(kind):
    run = kind.run

    def run_with_pause(spec, reporter, job):
        plan = take_plan(kind.name)
        if plan:
            at, nth, calls = plan["at"], plan.get("nth", 1), [0]
            home = Path(os.environ["AUDOBON_HOME"])
            ready = (lambda: any(home.glob(plan["once"]))) if plan.get("once") else (lambda: True)
            if at == "start":
                pause(job, reporter, at)
            elif at == "reporter":
                for name in ("step", "log"):
                    original = getattr(reporter, name)

                    def counted(*a, _original=original, **k):
                        _original(*a, **k)
                        calls[0] += 1
                        if calls[0] >= nth and ready():
                            pause(job, reporter, f"reporter call {calls[0]}")
                    setattr(reporter, name, counted)
            else:
                owner, attr = resolve(at)
                original = getattr(owner, attr)

                before = plan.get("when") == "before"

                def counted(*a, **k):
                    calls[0] += 1
                    if before and calls[0] == nth:
                        pause(job, reporter, f"before {at} call {nth}")
                    out = original(*a, **k)
                    if not before and calls[0] == nth:
                        pause(job, reporter, f"{at} call {nth}")
                    return out
                setattr(owner, attr, counted)
        return run(spec, reporter, job)

    return run_with_pause


for name, kind in list(JOB_KINDS.items()):
    JOB_KINDS[name] = replace(kind, run=wrapped(kind))

from audobon_site.cli import main
main(["run_worker", *sys.argv[1:]])
"""


# --- the home and its workers ----------------------------------------------------------------

class Home:
    def __init__(self, root: Path):
        self.root = root
        self.imports = root / "imports"
        self.control = root / "kill-test"
        self.env = audobon_env(root, AUDOBON_IMPORT_ROOTS=str(self.imports), AUDOBON_HEARTBEAT_SECONDS="1",
                               AUDOBON_TEST_SMOLLM2_GGUF=str(self.imports / "tiny-llama.Q8_0.gguf"))
        self.workers: dict[str, subprocess.Popen] = {}
        self.logs = root / "worker-logs"
        self.made: dict[str, object] = {}

    # the shell, as a user runs it
    def cli(self, *args: str, timeout: float = 300) -> str:
        res = audobon(self.env, *args, timeout=timeout)
        assert res.returncode == 0, f"audobon {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    # reads straight from the embedded database (WAL: readers never block the worker)
    def sql(self, query: str, *params):
        with sqlite3.connect(self.root / "db.sqlite3", timeout=30) as db:
            return db.execute(query, params).fetchall()

    def job(self, job_id: int) -> dict:
        row = self.sql("SELECT status, error, result, worker_id, retry_of_id FROM monitoring_job WHERE id=?",
                       job_id)[0]
        return {"status": row[0], "error": row[1], "result": json.loads(row[2] or "null"),
                "worker_id": row[3], "retry_of": row[4]}

    def wait(self, what: str, predicate, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.worker_output()}")

    def wait_finished(self, job_id: int, timeout: float = 180) -> dict:
        return self.wait(f"job {job_id} to finish",
                         lambda: (j := self.job(job_id))["status"] not in ("queued", "running") and j,
                         timeout)

    def worker(self, queue: str) -> subprocess.Popen:
        proc = self.workers.get(queue)
        if proc is not None and proc.poll() is None:
            return proc
        self.logs.mkdir(exist_ok=True)
        log = open(self.logs / f"{queue}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--queue", queue], env=self.env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.workers[queue] = proc
        return proc

    def kill(self, queue: str) -> int:
        proc = self.workers.pop(queue)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # reaped: its pid is gone, as after a real crash
        assert proc.returncode == -signal.SIGKILL
        return proc.pid

    def stop_all(self):
        for queue in list(self.workers):
            proc = self.workers.pop(queue)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def worker_output(self) -> str:
        if not self.logs.is_dir():
            return ""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.iterdir()))

    def plan_pause(self, kind: str, pause: dict) -> None:
        self.control.mkdir(exist_ok=True)
        tmp = self.control / f".{kind}.tmp"
        tmp.write_text(json.dumps(pause))
        os.replace(tmp, self.control / f"{kind}.json")

    # what must not change when a job is killed
    def store(self) -> BlobStore:
        return BlobStore(self.root / "store")

    def snapshot(self) -> dict:
        counts = {table: self.sql(f"SELECT count(*) FROM {table}")[0][0]
                  for table in ("assets_asset", "assets_assetversion", "assets_assetversion_parents",
                                "registry_discoveredmodel", "assets_backup", "assets_recoverypoint")}
        counts["blobs"] = self.store().usage()
        counts["backups"] = sorted(p.name for p in (self.root / "backups").iterdir()
                                   if not p.name.startswith(".")) if (self.root / "backups").is_dir() else []
        return counts


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = Home(tmp_path_factory.mktemp("kill") / "home")
    h.imports.mkdir(parents=True)
    h.cli("migrate", "-v", "0")
    h.cli("demo_models")
    try:
        yield h
    finally:
        h.stop_all()


# --- what each kind needs, made once for the module on first use --------------------------------

def made(home: Home, key: str, make):
    if key not in home.made:
        home.made[key] = make()
    return home.made[key]


def chat_dataset(home: Home) -> str:
    def make():
        from tests.training.builders import write_chat_dataset

        folder = write_chat_dataset(home.imports / "docs-chat", n_train=24, n_val=4)
        home.cli("import_asset", str(folder), "--kind", "dataset", "--name", "docs-chat")
        return "docs-chat"
    return made(home, "chat", make)


def finetune_spec(home: Home, max_steps: int, save_steps: int) -> Path:
    chat_dataset(home)
    spec = {"base_model": "demo-llama-base", "dataset": "docs-chat", "task": "causal_lm", "method": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "learning_rate": 2e-3, "batch_size": 4,
            "max_steps": max_steps, "eval_steps": max_steps, "save_steps": save_steps, "seed": 7,
            "packing": False, "samples": [], "sample_max_new_tokens": 4}
    path = home.imports / f"finetune-{max_steps}-{save_steps}.yaml"
    path.write_text(json.dumps(spec))
    return path


def finished_run(home: Home) -> int:
    def make():
        out = json.loads(home.cli("finetune", str(finetune_spec(home, 2, 2)), "--json"))
        assert out["status"] == "succeeded", out
        return out["run"]
    return made(home, "run", make)


def gguf_file(home: Home) -> Path:
    def make():
        from tests.registry.test_gguf import write_tiny_gguf

        return write_tiny_gguf(home.imports / "tiny-llama.Q8_0.gguf")
    return made(home, "gguf", make)


def model_folder(home: Home, name: str) -> Path:
    def make():
        # A copy of a demo model under a new name: a folder the scan has not seen.
        src = home.root / "demo"
        base = next(p.parent for p in src.rglob("config.json") if "base" in p.parent.name)
        dest = home.imports / name
        shutil.copytree(base, dest)
        return dest
    return made(home, f"folder-{name}", make)


def foreign_backup(home: Home, tmp: Path) -> Path:
    """A backup of another library holding one asset this one lacks."""
    def make():
        other = audobon_env(tmp / "other-home")
        data = tmp / "notes"
        data.mkdir()
        for i in range(4):
            (data / f"part-{i}.bin").write_bytes(os.urandom(256 << 10))
        for args in (("import_asset", str(data), "--kind", "other", "--name", "restored-notes"),
                     ("backup", str(home.imports / "other.tar"))):
            res = audobon(other, *args, timeout=120)
            assert res.returncode == 0, res.stderr
        return home.imports / "other.tar"
    return made(home, "backup", make)


def loose_files(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"part-{i}.bin").write_bytes(os.urandom(size))
    return folder


# --- the cases ----------------------------------------------------------------------------------

@dataclass
class Case:
    queue: str
    spec: object  # dict, or spec(home, tmp_path) -> dict
    pause: dict = field(default_factory=lambda: {"at": "reporter", "nth": 1})
    submit: str = "jobs"  # "jobs": `audobon jobs submit`; "finetune": `audobon finetune --queue`
    killed: object = None  # extra checks after the kill: killed(home, before, after, ctx)
    done: object = None  # extra checks after the rerun: done(home, result, ctx)
    # What the kind leaves in the library when it succeeds: {table: rows added} of snapshot().
    adds: dict = field(default_factory=dict)
    complete_blobs: bool = False  # blobs it ingested before the kill may stay (whole, unreferenced)


def _asset_import(home, tmp):
    loose_files(home.imports / "bundle", 6, 2 << 20)
    return {"source": str(home.imports / "bundle"), "kind": "other", "name": "bundle"}


def _backup_killed(home, before, after, ctx):
    # Only a hidden temp file may be left where the backup is written: never a short backup.
    assert not (home.root / "backups" / "nightly.tar").exists()


def _gc_spec(home, tmp):
    store = home.store()
    for i in range(3):
        path = tmp / f"loose-{i}.bin"
        path.write_bytes(os.urandom(64 << 10))
        store.ingest_file(path)
    return {"execute": True}


def _gc_killed(home, before, after, ctx):
    # A kill between deletions frees some unreferenced blobs and never a referenced one.
    assert after["blobs"][0] < before["blobs"][0]
    after["blobs"] = before["blobs"]


def _gc_done(home, result, ctx):
    assert result["executed"] and result["blobs"] >= 1


def _scan_spec(home, tmp):
    return {"paths": [str(model_folder(home, "scan-me"))]}


def _model_import_spec(home, tmp):
    folder = model_folder(home, "import-me")
    home.cli("scan_models", str(folder))
    (model_id,) = home.sql("SELECT id FROM registry_discoveredmodel WHERE path=?", str(folder))[0]
    return {"model_id": model_id}


def _synth_spec(home, tmp):
    return {"name": "synthetic", "generator": "demo-llama-base", "num_rows": 2, "batch_size": 1,
            "seed_tasks": [{"instruction": "Write a haiku about the sea."},
                           {"instruction": "List three fruits that are red."}],
            "sampling": {"max_new_tokens": 4, "temperature": 1.0},
            "filters": {"language": None, "refusal_patterns": []}, "dedup": {"method": "none"}}


def _smollm2_spec(home, tmp):
    gguf_file(home)  # what the worker imports in place of the real SmolLM2 (LAUNCHER, SWAP)
    return {}


def _finetune_done(home, result, ctx):
    assert result["metrics"]["steps"] == 2
    # The finished run serves try_it too (it makes its own when it runs first).
    home.made.setdefault("run", result["run"])


RECIPE = ("merge_method: linear\nmodels:\n  - model: demo-llama-tune-even\n    parameters: {weight: 0.3}\n"
          "  - model: demo-llama-tune-late\n    parameters: {weight: 0.7}\n")

CASES: dict[str, Case] = {
    "selftest": Case("light", {"steps": 40, "step_seconds": 0.02}),
    "asset_import": Case("light", _asset_import, adds={"assets_asset": 1, "assets_assetversion": 1},
                         pause={"at": "reporter", "nth": 2}, complete_blobs=True),
    "library_backup": Case("light", {"name": "nightly"}, killed=_backup_killed,
                           adds={"assets_backup": 1, "backups": ["nightly.tar"]}),
    "library_restore": Case("light", lambda h, t: {"path": str(foreign_backup(h, t))},
                            adds={"assets_asset": 1, "assets_assetversion": 1}),
    "store_verify": Case("light", {}),
    "store_gc": Case("light", _gc_spec, pause={"at": "pathlib:Path.unlink", "nth": 1}, killed=_gc_killed,
                     done=_gc_done),
    "scan_models": Case("light", _scan_spec, adds={"registry_discoveredmodel": 1},
                        pause={"at": "apps.registry.services:_inspect_and_register", "when": "before"}),
    # The scan registered the folder in place; the import adds a stored version of it.
    "model_import": Case("light", _model_import_spec, adds={"assets_assetversion": 1}),
    "diff_models": Case("heavy", {"a": "demo-llama-base", "b": "demo-llama-tune-even"},
                        adds={"assets_asset": 1, "assets_assetversion": 1}),
    # Everything is registered already: the rerun must find it all and add nothing.
    "demo_models": Case("heavy", {}, pause={"at": "start"}),
    "import_gguf": Case("heavy", lambda h, t: {"path": str(gguf_file(h)), "name": "tiny-gguf"},
                        adds={"assets_asset": 1, "assets_assetversion": 1}),
    "demo_smollm2": Case("heavy", _smollm2_spec,
                         adds={"assets_asset": 1, "assets_assetversion": 1}),
    # Validation off (recorded on the version): the kill and the registration are what count here.
    "assemble": Case("heavy", {"recipe": RECIPE, "name": "mix", "validate_result": False},
                     adds={"assets_asset": 1, "assets_assetversion": 1}),
    "extract_lora": Case("heavy", {"base": "demo-llama-base", "tuned": "demo-llama-tune-even", "rank": 2,
                                   "name": "lora-even"}, adds={"assets_asset": 1, "assets_assetversion": 1}),
    "extract_components": Case("light", {"model": "demo-llama-tune-late", "select": ["head"],
                                         "name": "late-head"},
                               adds={"assets_asset": 1, "assets_assetversion": 1}),
    "import_dataset": Case("light", lambda h, t: {"path": str(_alpaca(h)), "name": "alpaca-mini"},
                           adds={"assets_asset": 1, "assets_assetversion": 1}),
    "dataset_stats": Case("light", lambda h, t: {"dataset": chat_dataset(h), "model": "demo-llama-base"},
                          adds={"assets_asset": 1, "assets_assetversion": 1}),
    "synth_dataset": Case("heavy", _synth_spec, adds={"assets_asset": 1, "assets_assetversion": 1}),
    # Killed once its first checkpoint is written: the sweep continues the run from there.
    "finetune": Case("heavy", lambda h, t: str(finetune_spec(h, 2, 1)), submit="finetune",
                     pause={"at": "reporter", "once": "runs/*/*/checkpoint-1"}, done=_finetune_done),
    "evaluate": Case("heavy", lambda h, t: {"model": "demo-llama-base", "dataset": chat_dataset(h),
                                            "texts": 4, "max_tokens": 32}),
    "try_it": Case("heavy", lambda h, t: {"run": finished_run(h), "prompt": "What does json do?",
                                          "max_new_tokens": 4}),
}


def _alpaca(home: Home) -> Path:
    path = home.imports / "alpaca.jsonl"
    with path.open("w") as fh:
        for i in range(30):
            row = {"instruction": f"Say the number {i}.", "input": "", "output": f"{i}"}
            fh.write(json.dumps(row) + "\n")
    return path


def test_every_job_kind_has_a_kill_case():
    """A new job kind fails here until it gets a case below."""
    assert sorted(CASES) == sorted(JOB_KINDS)


def _submit(home: Home, kind: str, case: Case, spec) -> int:
    if case.submit == "finetune":
        return json.loads(home.cli("finetune", spec, "--queue", "--json"))["job"]
    return int(home.cli("jobs", "submit", kind, "--spec", json.dumps(spec)).strip())


@pytest.mark.parametrize("kind", sorted(CASES))
def test_kill_9_mid_job_interrupts_it_and_a_rerun_succeeds(home, kind, tmp_path):
    if kind not in JOB_KINDS:
        pytest.fail(f"{kind} is not a job kind any more: remove its case")
    case = CASES[kind]
    if not callable(JOB_KINDS[kind].queue):  # selftest's queue is in its spec: light by default
        assert JOB_KINDS[kind].queue == case.queue, f"{kind} runs on the {JOB_KINDS[kind].queue} queue"
    spec = case.spec(home, tmp_path) if callable(case.spec) else case.spec
    before = home.snapshot()
    home.worker(case.queue)
    home.plan_pause(kind, case.pause)
    job_id = _submit(home, kind, case, spec)

    # 1. The job is running and stopped at its known point; the worker dies with -9.
    marker = home.control / f"paused-{job_id}"

    def paused():
        if not marker.exists() and home.job(job_id)["status"] not in ("queued", "running"):
            raise AssertionError(f"{kind} job {job_id} ended before its pause point: {home.job(job_id)}")
        return marker.exists()
    home.wait(f"{kind} job {job_id} to reach its pause point", paused)
    assert home.job(job_id)["status"] == "running"
    killed_pid = home.kill(case.queue)

    # 2. A fresh worker's start-up sweep marks it interrupted.
    home.worker(case.queue)
    job = home.wait(f"{kind} job {job_id} to become interrupted",
                    lambda: (j := home.job(job_id))["status"] != "running" and j)
    assert job["status"] == "interrupted", job
    assert "its worker is gone" in job["error"]

    # 3. Nothing lost, nothing half-registered: the library and store are as before.
    after = home.snapshot()
    if case.complete_blobs:
        # Blobs ingested before the kill are whole (verify checks each one's hash); the
        # rerun finds them in the store instead of writing them again.
        assert after["blobs"][0] >= before["blobs"][0]
        after["blobs"] = before["blobs"]
    if case.killed:
        case.killed(home, before, after, spec)
    assert after == before
    assert home.store().verify().ok

    # 4. The rerun succeeds: fine-tuning continues by itself from its checkpoint, the others
    # are retried from the shell.
    if kind == "finetune":
        follow = home.wait("the run's continuation job", lambda: home.sql(
            "SELECT id FROM monitoring_job WHERE kind='finetune' AND id>? ORDER BY id", job_id))
        rerun = follow[0][0]
        row = home.sql("SELECT spec FROM monitoring_job WHERE id=?", rerun)[0]
        assert json.loads(row[0])["resume"] is True
    else:
        rerun = int(home.cli("jobs", "retry", str(job_id)).strip())
        assert home.job(rerun)["retry_of"] == job_id
    done = home.wait_finished(rerun, timeout=240)
    assert done["status"] == "succeeded", (done, home.worker_output())
    assert not (home.control / f"paused-{rerun}").exists()
    if case.done:
        case.done(home, done["result"], spec)

    final = home.snapshot()
    for table, added in case.adds.items():
        if isinstance(added, list):
            assert sorted(set(final[table]) - set(before[table])) == added, (table, final[table])
        else:
            assert final[table] - before[table] == added, (table, before[table], final[table])
    assert home.store().verify().ok
    # The killed worker's scratch folders are gone once the kind ran again.
    work = home.root / "work"
    left = [p for p in work.glob("*/*") if p.name.startswith(f"{killed_pid}-")] if work.is_dir() else []
    assert left == []
