"""Run merge cases through mergekit 0.1.5's own merge methods, at the tensor level.

Run with the python of an environment that has mergekit 0.1.5 (not the project's venv):

    $AUDOBON_MERGEKIT_PYTHON tests/assembly/mergekit_reference.py CASES.json INPUTS.npz OUT.npz

CASES.json: {"dtypes": {input key: "bfloat16" | "float32" | ...},
             "cases": [{"id", "method", "models": [keys], "base": key | null,
                        "global": {...}, "per_model": [{...}, ...], "torch_seed": int | null}]}
INPUTS.npz: the input tensors; bfloat16 ones as their int16 bit patterns (numpy has no bfloat16).
OUT.npz: per case id, the result as its bit pattern (int16 for 16-bit types, int32/int64 for
float32/float64) and "<id>.dtype", the result's dtype name.

Each case is one `mergekit.merge_methods.api.merge_tensors` call: the base first (base_index 0)
when there is one, per-model parameters as lists in model order. A random method's case names the
seed of torch's global generator, which mergekit's DARE/DELLA draw from. A model that leaves out a
per-model parameter that another model sets gets mergekit's default for it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from mergekit import merge_methods
from mergekit.merge_methods.api import merge_tensors

BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
        torch.float64: torch.int64}


def load(arr: np.ndarray, dtype_name: str) -> torch.Tensor:
    dtype = getattr(torch, dtype_name)
    return torch.from_numpy(arr.copy()).view(dtype)


def main(cases_path: str, inputs_path: str, out_path: str) -> None:
    with open(cases_path) as f:
        spec = json.load(f)
    arrays = np.load(inputs_path)
    inputs = {key: load(arrays[key], dtype) for key, dtype in spec["dtypes"].items()}
    out: dict[str, np.ndarray] = {}
    for case in spec["cases"]:
        tensors = [inputs[key] for key in case["models"]]
        base_index = None
        if case["base"] is not None:
            tensors = [inputs[case["base"]], *tensors]
            base_index = 0
        parameters = dict(case["global"])
        # A model that leaves a per-model parameter out gets mergekit's own default for it.
        defaults = {p.name: p.default for p in merge_methods.get(case["method"]).spec.parameters}
        names = {name for values in case["per_model"] for name in values}
        for name in sorted(names):
            parameters[name] = [values.get(name, defaults[name]) for values in case["per_model"]]
        if case.get("torch_seed") is not None:
            torch.manual_seed(case["torch_seed"])
        with torch.no_grad():
            result = merge_tensors(tensors, case["method"], parameters=parameters, base_index=base_index)
        out[case["id"]] = result.contiguous().view(BITS[result.dtype]).numpy()
        out[case["id"] + ".dtype"] = np.array(str(result.dtype).removeprefix("torch."))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
