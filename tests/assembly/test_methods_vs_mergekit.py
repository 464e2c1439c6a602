"""Our merge methods against mergekit 0.1.5 itself, tensor by tensor, within one ulp.

Needs a separate environment with mergekit 0.1.5 (its dependencies clash with the project's), e.g.

    python3 -m venv /work/mergekit-venv
    /work/mergekit-venv/bin/pip install torch==2.13.0     # first, so pip keeps the CPU wheel
    /work/mergekit-venv/bin/pip install mergekit==0.1.5
    AUDOBON_MERGEKIT_PYTHON=/work/mergekit-venv/bin/python \
        .venv/bin/pytest -q tests/assembly/test_methods_vs_mergekit.py

Every case runs in bfloat16 and float32. The random methods run too: our per-tensor generator is
seeded with `derive_seed(seed, name)` and mergekit's global generator with the same number, so
the masks are the same draws.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from apps.assembly.engine.methods import derive_seed, get_method, tensor_generator

MERGEKIT_PYTHON = os.environ.get("AUDOBON_MERGEKIT_PYTHON", "")
SCRIPT = Path(__file__).with_name("mergekit_reference.py")
SEED = 1234

pytestmark = pytest.mark.skipif(
    not MERGEKIT_PYTHON,
    reason="AUDOBON_MERGEKIT_PYTHON is not set: point it at the python of a venv with mergekit==0.1.5 "
           "(see this file's docstring)",
)

BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
        torch.float64: torch.int64}

# (case name, method, model keys, base key, method-wide params, per-model params)
CASES: list[tuple[str, str, list[str], str | None, dict[str, Any], list[dict[str, Any]]]] = [
    ("linear", "linear", ["m1", "m2", "m3"], None, {}, [{"weight": 0.3}, {"weight": 0.5}, {"weight": 0.2}]),
    ("linear_raw", "linear", ["m1", "m2"], None, {"normalize": False}, [{"weight": 0.7}, {"weight": -0.2}]),
    ("linear_with_base", "linear", ["base", "m1"], None, {}, [{"weight": 1.0}, {"weight": 3.0}]),
    ("slerp", "slerp", ["m1"], "base", {"t": 0.3}, [{}]),
    ("slerp_far", "slerp", ["far"], "base", {"t": 0.75}, [{}]),
    ("slerp_colinear", "slerp", ["twice"], "base", {"t": 0.4}, [{}]),
    ("slerp_vector", "slerp", ["v1"], "v0", {"t": 0.6}, [{}]),
    ("nuslerp", "nuslerp", ["m1", "m2"], "base", {}, [{"weight": 0.4}, {"weight": 0.6}]),
    ("nuslerp_no_base", "nuslerp", ["m1", "far"], None, {}, [{"weight": 1.0}, {"weight": 2.0}]),
    ("nuslerp_rows", "nuslerp", ["m1", "m2"], "base", {"nuslerp_flatten": False},
     [{"weight": 0.5}, {"weight": 0.5}]),
    ("nuslerp_columns", "nuslerp", ["m1", "m2"], "base", {"nuslerp_flatten": False, "nuslerp_row_wise": True},
     [{"weight": 0.3}, {"weight": 0.9}]),
    ("task_arithmetic", "task_arithmetic", ["m1", "m2"], "base", {}, [{"weight": 0.5}, {"weight": 0.3}]),
    ("task_arithmetic_norm", "task_arithmetic", ["m1", "m2", "m3"], "base",
     {"normalize": True, "lambda": 0.8}, [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.9}]),
    ("ties", "ties", ["m1", "m2", "m3"], "base", {},
     [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}, {"weight": 0.3, "density": 0.3}]),
    ("ties_raw_int8", "ties", ["m1", "m2"], "base", {"normalize": False, "int8_mask": True, "lambda": 1.3},
     [{"weight": 1.0, "density": 0.6}, {"weight": 0.5, "density": 0.4}]),
    ("ties_rescale", "ties", ["m1", "m2"], "base", {"rescale": True},
     [{"weight": 0.7, "density": 0.25}, {"weight": 0.3, "density": 0.9}]),
    ("ties_vector", "ties", ["v1", "v2"], "v0", {}, [{"weight": 0.5, "density": 0.5}, {"weight": 0.5}]),
    ("breadcrumbs", "breadcrumbs", ["m1", "m2"], "base", {},
     [{"weight": 0.5, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.6, "gamma": 0.2}]),
    ("breadcrumbs_rescale", "breadcrumbs", ["m1", "m2"], "base", {"rescale": True, "normalize": True},
     [{"weight": 0.5, "density": 0.9, "gamma": 0.2}, {"weight": 1.5}]),
    ("breadcrumbs_ties", "breadcrumbs_ties", ["m1", "m2", "m3"], "base", {},
     [{"weight": 0.5, "density": 0.7, "gamma": 0.1}, {"weight": 0.5, "density": 0.5}, {"weight": 0.2}]),
    ("model_stock", "model_stock", ["m1", "m2"], "base", {}, [{}, {}]),
    ("model_stock_3", "model_stock", ["m1", "m2", "m3"], "base", {}, [{}, {}, {}]),
    ("model_stock_rows", "model_stock", ["m1", "m2", "m3"], "base", {"filter_wise": True}, [{}, {}, {}]),
    ("model_stock_vector", "model_stock", ["v1", "v2"], "v0", {"filter_wise": True}, [{}, {}]),
    ("passthrough", "passthrough", ["m2"], None, {}, [{}]),
    ("passthrough_scale", "passthrough", ["m2"], None, {}, [{"scale": 0.5}]),
    ("dare_linear", "dare_linear", ["m1", "m2"], "base", {},
     [{"weight": 0.5, "density": 0.5}, {"weight": 0.5, "density": 0.3}]),
    ("dare_ties", "dare_ties", ["m1", "m2", "m3"], "base", {"normalize": True},
     [{"weight": 0.5, "density": 0.5}, {"weight": 0.3, "density": 0.7}, {"weight": 0.4, "density": 0.9}]),
    ("della", "della", ["m1", "m2"], "base", {},
     [{"weight": 0.6, "density": 0.5, "epsilon": 0.2}, {"weight": 0.4, "density": 0.4}]),
    ("della_linear", "della_linear", ["m1", "m2"], "base", {"lambda": 0.9},
     [{"weight": 0.6, "density": 0.6, "epsilon": 0.1}, {"weight": 0.4, "density": 0.7}]),
    ("della_vector", "della", ["v1", "v2"], "v0", {}, [{"weight": 0.5, "density": 0.5}, {"weight": 0.5}]),
]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A base and fine-tune-like models (base + small deltas), seeded; tiny shapes."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(24, 16, generator=g)
    v0 = torch.randn(16, generator=g)
    out = {
        "base": base,
        "m1": base + 0.05 * torch.randn(24, 16, generator=g),
        "m2": base + 0.05 * torch.randn(24, 16, generator=g),
        "m3": base + 0.05 * torch.randn(24, 16, generator=g),
        "far": torch.randn(24, 16, generator=g),
        "twice": 2 * base,
        "v0": v0,
        "v1": v0 + 0.1 * torch.randn(16, generator=g),
        "v2": v0 + 0.1 * torch.randn(16, generator=g),
    }
    return {k: v.to(dtype) for k, v in out.items()}


def _case_id(name: str, tag: str) -> str:
    return f"{name}-{tag}"


def _ulp_keys(t: torch.Tensor) -> torch.Tensor:
    """Integers in float order: neighbouring floats differ by 1; +0 and -0 are both 0."""
    bits = t.contiguous().view(BITS[t.dtype]).to(torch.int64)
    width = torch.finfo(t.dtype).bits
    magnitude = bits & ((1 << (width - 1)) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{case id: (ours, mergekit's)}, all cases in one mergekit process."""
    folder = tmp_path_factory.mktemp("mergekit")
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    ours: dict[str, torch.Tensor] = {}
    cases = []
    for tag, dtype in DTYPES.items():
        inputs = _inputs(dtype)
        for key, tensor in inputs.items():
            arrays[f"{key}-{tag}"] = tensor.view(BITS[dtype]).numpy()
            dtypes[f"{key}-{tag}"] = str(dtype).removeprefix("torch.")
        for name, method_name, models, base, global_params, per_model in CASES:
            case_id = _case_id(name, tag)
            method = get_method(method_name)
            generator = None if method.deterministic else tensor_generator(SEED, case_id)
            with torch.no_grad():
                ours[case_id] = method.merge(
                    [inputs[m] for m in models], inputs[base] if base else None, per_model, global_params,
                    generator=generator,
                )
            cases.append({
                "id": case_id, "method": method_name, "models": [f"{m}-{tag}" for m in models],
                "base": f"{base}-{tag}" if base else None, "global": global_params, "per_model": per_model,
                "torch_seed": None if method.deterministic else derive_seed(SEED, case_id),
            })
    np.savez(folder / "inputs.npz", **arrays)
    (folder / "cases.json").write_text(json.dumps({"dtypes": dtypes, "cases": cases}))
    run = subprocess.run(
        [MERGEKIT_PYTHON, str(SCRIPT), str(folder / "cases.json"), str(folder / "inputs.npz"),
         str(folder / "out.npz")],
        capture_output=True, text=True, timeout=600, cwd=folder,
    )
    if run.returncode != 0:
        pytest.fail(f"mergekit reference failed:\n{run.stderr[-4000:]}")
    theirs = np.load(folder / "out.npz")
    out = {}
    for case_id, mine in ours.items():
        dtype = getattr(torch, str(theirs[case_id + ".dtype"]))
        out[case_id] = (mine, torch.from_numpy(theirs[case_id].copy()).view(dtype))
    return out


@pytest.mark.parametrize("tag", list(DTYPES))
@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_matches_mergekit_within_one_ulp(results: dict[str, tuple[torch.Tensor, torch.Tensor]], name: str,
                                         tag: str) -> None:
    ours, theirs = results[_case_id(name, tag)]
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    assert torch.isfinite(theirs).all()
    distance = (_ulp_keys(ours) - _ulp_keys(theirs)).abs()
    worst = int(distance.max())
    assert worst <= 1, f"{name} ({tag}): {int((distance > 1).sum())} entries over 1 ulp, worst {worst} ulp"


def test_report_bit_identical(results: dict[str, tuple[torch.Tensor, torch.Tensor]],
                              capsys: pytest.CaptureFixture[str]) -> None:
    """Not a requirement beyond one ulp; prints how many cases are bit-identical (pytest -s)."""
    identical = [k for k, (a, b) in results.items() if torch.equal(_ulp_keys(a), _ulp_keys(b))]
    with capsys.disabled():
        print(f"\n{len(identical)}/{len(results)} mergekit cases bit-identical", file=sys.stderr)
        for k in sorted(set(results) - set(identical)):
            print(f"  within 1 ulp, not identical: {k}", file=sys.stderr)
