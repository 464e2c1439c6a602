"""What makes the sorting merges fast and lean must not change a single bit of what they compute:
integer sort keys, task vectors pruned side by side, in-place arithmetic, and the executor's
largest-first schedule under a memory budget."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from apps.assembly.engine.executor import SORT_COST, _Schedule
from apps.assembly.engine.methods import get_method
from apps.assembly.engine.methods.sparsify import by_magnitude, largest_first
from apps.assembly.engine.plan import OutputTensor, SourceTensor
from apps.monitoring.engine.reporter import JobCancelled


def _tied(count: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Small values in a low-precision type: thousands of exact ties, as real task vectors have."""
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(count, generator=g) * 0.003).to(dtype)
    values[::13] = 0
    return values


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("count", [1, 9, 4_097, 300_001])
def test_ranking_is_mergekits_float_argsort_ties_included(dtype, count):
    magnitudes = _tied(count, dtype, seed=count).abs()
    expected = torch.argsort(magnitudes.float(), descending=True)  # mergekit's call
    assert torch.equal(largest_first(magnitudes), expected)


def test_a_nan_falls_back_to_the_float_ranking():
    magnitudes = _tied(10_000, torch.bfloat16).abs()
    magnitudes[[5, 77, 900]] = float("nan")
    assert torch.equal(largest_first(magnitudes), torch.argsort(magnitudes.float(), descending=True))


@pytest.mark.parametrize("rescale", [False, True])
def test_pruning_in_place_gives_the_same_numbers(rescale):
    delta = _tied(50_000, torch.bfloat16).reshape(250, 200)
    expected = by_magnitude(delta.clone(), 0.3, rescale)
    work = delta.clone()
    out = by_magnitude(work, 0.3, rescale, inplace=True)
    assert out.data_ptr() == work.data_ptr()
    assert torch.equal(out, expected)
    assert int((out != 0).sum()) <= int(0.3 * delta.numel())


def _reference_ties(models, base, per_model, normalize=True):
    """mergekit 0.1.5's TIES written out plainly, out of place, one model after another."""
    deltas = []
    for m, p in zip(models, per_model, strict=True):
        d = m - base
        w = d.abs().view(-1).float()
        keep = int(p["density"] * d.numel())
        mask = torch.zeros_like(d)
        mask.view(-1)[torch.argsort(w, descending=True)[:keep]] = 1
        deltas.append(d * mask)
    deltas = torch.stack(deltas)
    weights = torch.tensor([p["weight"] for p in per_model], dtype=deltas.dtype).reshape(-1, 1, 1)
    weighted = deltas * weights
    sign = weighted.sign().to(weighted.dtype)
    majority = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    agree = sign == majority
    merged = (weighted * agree).sum(dim=0)
    divisor = (weights * agree).sum(dim=0)
    divisor[divisor == 0] = 1
    if normalize:
        merged /= divisor
    return (base + merged).to(base.dtype)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ties_side_by_side_equals_mergekits_formula_bit_for_bit(workers):
    base = _tied(120 * 90, torch.bfloat16, seed=1).reshape(120, 90) * 10
    models = [base + _tied(base.numel(), torch.bfloat16, seed=s).reshape(base.shape) for s in (2, 3, 4)]
    per_model = [{"weight": 0.5, "density": 0.4}, {"weight": 0.3, "density": 0.7},
                 {"weight": 0.2, "density": 0.5}]
    expected = _reference_ties(models, base, per_model)
    inputs = [m.clone() for m in models]
    out = get_method("ties").merge(inputs, base.clone(), per_model, {"normalize": True}, workers=workers)
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(inputs, models, strict=True))  # inputs untouched


@pytest.mark.parametrize("name", ["ties", "dare_ties", "task_arithmetic", "linear", "slerp"])
def test_handing_the_inputs_over_changes_nothing_but_the_callers_list(name):
    from apps.assembly.engine.methods.spec import tensor_generator

    method = get_method(name)
    base = _tied(40 * 30, torch.bfloat16, seed=5).reshape(40, 30) * 10
    count = 1 if method.max_models == 1 else 2
    models = [base + _tied(base.numel(), torch.bfloat16, seed=6 + i).reshape(40, 30) for i in range(count)]
    known = set(method.tensor_params)
    per_model = [{k: v for k, v in {"weight": 0.5, "density": 0.6}.items() if k in known}] * count
    params = {"t": 0.4} if "t" in method.global_params else {}
    use_base = base if method.base_policy == "required" else None

    def run(consume):
        handed = [m.clone() for m in models]
        gen = None if method.deterministic else tensor_generator(9, "x")
        out = method.merge(handed, use_base, per_model, params, generator=gen, consume=consume)
        return out, handed

    kept_out, kept = run(False)
    given_out, given = run(True)
    assert torch.equal(kept_out, given_out)
    assert len(kept) == count and given == []  # handed over: the caller's list is emptied


def test_only_order_free_pruning_splits_by_model():
    assert get_method("ties").splits_by_model and get_method("breadcrumbs_ties").splits_by_model
    assert not get_method("dare_ties").splits_by_model  # one generator, drawn in model order
    assert not get_method("della").splits_by_model
    assert not get_method("linear").splits_by_model


# --- the executor's schedule -------------------------------------------------------------------


def _out(name: str, numel: int, method: str = "ties", models: int = 2) -> OutputTensor:
    sources = [SourceTensor("base", name, (numel,), "BF16", role="base")]
    sources += [SourceTensor(f"m{i}", name, (numel,), "BF16") for i in range(models)]
    return OutputTensor(name=name, shape=(numel,), dtype="BF16", method=method, sources=sources)


class _Recorder:
    """Runs each output for a moment on a real pool and records what ran together."""

    def __init__(self, schedule: _Schedule):
        self.schedule, self.lock = schedule, threading.Lock()
        self.running: dict[str, int] = {}
        self.started: list[tuple[str, int]] = []
        self.finished: list[str] = []
        self.most_cost = 0
        self.most_at_once = 0

    def start(self, pool):
        def start(out, workers):
            with self.lock:
                self.running[out.name] = self.schedule.cost(out, workers)
                self.started.append((out.name, workers))
                self.most_cost = max(self.most_cost, sum(self.running.values()))
                self.most_at_once = max(self.most_at_once, len(self.running))

            def work():
                time.sleep(0.02)
                with self.lock:
                    del self.running[out.name]
                return out.name

            return pool.submit(work)

        return start

    def finish(self, out, result):
        assert result == out.name
        self.finished.append(out.name)


def test_schedule_runs_largest_first_within_the_budget_and_finishes_everything():
    outputs = [_out(f"small.{i}", 100) for i in range(6)] + [_out("big.a", 1_000), _out("big.b", 1_000)]
    schedule = _Schedule(outputs, cores=2, at_once=2)
    assert schedule.budget == 1_000 * SORT_COST * 5 // 4
    rec = _Recorder(schedule)
    with ThreadPoolExecutor(max_workers=2) as pool:
        schedule.run(rec.start(pool), rec.finish, lambda: False)
    assert sorted(rec.finished) == sorted(o.name for o in outputs)
    assert rec.started[0] == ("big.a", 1)
    assert rec.most_cost <= schedule.budget  # the two big ones never ran together
    assert rec.most_at_once == 2  # …but small ones ran beside them


def test_schedule_gives_a_lone_output_the_cores_of_its_share():
    schedule = _Schedule([_out("only", 10, models=3)], cores=8, at_once=2)
    rec = _Recorder(schedule)
    with ThreadPoolExecutor(max_workers=2) as pool:
        schedule.run(rec.start(pool), rec.finish, lambda: False)
    assert rec.started == [("only", 3)]  # min(8 cores // 2 at once, 3 models)
    plain = _Schedule([_out("lin", 10, method="linear", models=3)], cores=8, at_once=2)
    assert plain.wanted(plain.outputs[0]) == 1  # linear has nothing to split


def test_equal_outputs_run_two_at_once():
    for method in ("ties", "linear"):
        schedule = _Schedule([_out(f"t.{i}", 100, method=method) for i in range(4)], cores=2, at_once=2)
        rec = _Recorder(schedule)
        with ThreadPoolExecutor(max_workers=2) as pool:
            schedule.run(rec.start(pool), rec.finish, lambda: False)
        assert rec.most_at_once == 2 and len(rec.finished) == 4


def test_schedule_stops_when_cancelled():
    schedule = _Schedule([_out("big", 1_000)] + [_out(f"t.{i}", 100) for i in range(4)], cores=2, at_once=2)
    rec = _Recorder(schedule)
    calls = iter([False, True])
    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(JobCancelled):
        schedule.run(rec.start(pool), rec.finish, lambda: next(calls, True))
    assert len(rec.started) == 2 and len(rec.finished) < 5
