"""LoRA extraction from a (base, fine-tune) pair: a PEFT adapter that rebuilds the fine-tune."""

import json

import pytest
import torch

from apps.assembly.engine.lora_extract import ExtractionError, extract_lora
from apps.registry.engine.demo_models import make_llama_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("demo") / "family")


def _weights(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def test_full_rank_adapter_rebuilds_the_fine_tune_through_peft(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    results = extract_lora(family["base"], family["tune-late"], tmp_path / "lora", energy=1.0)
    assert all(m.rel_error < 1e-4 for m in results)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "model.layers.0.self_attn.q_proj" in config["target_modules"]
    base = AutoModelForCausalLM.from_pretrained(family["base"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, tmp_path / "lora").merge_and_unload().state_dict()
    tuned = _weights(family["tune-late"])
    for name in ("model.layers.3.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(merged[name], tuned[name], atol=1e-4, rtol=1e-4)


def test_fixed_rank_reports_the_error_it_leaves(family, tmp_path):
    results = extract_lora(family["base"], family["tune-late"], tmp_path / "r2", rank=2)
    assert {m.rank for m in results} == {2}
    # Random noise deltas are full rank: keeping 2 directions leaves most of the error.
    assert all(0.5 < m.rel_error < 1.0 for m in results)
    report = json.loads((tmp_path / "r2" / "extraction.json").read_text())
    assert len(report["modules"]) == len(results) and report["rank"] == 2


def test_energy_picks_a_rank_per_module(family, tmp_path):
    results = extract_lora(family["base"], family["tune-late"], tmp_path / "e", energy=0.5)
    assert all(m.energy >= 0.5 and 1 <= m.rank < m.full_rank for m in results)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of rank"), ({"rank": 0}, "rank must be at least 1"),
    ({"energy": 1.5}, r"energy must be in \(0, 1\]"),
    ({"rank": 2, "targets": ["nothing"]}, "no linear module"),
])
def test_bad_requests_are_refused_and_nothing_is_written(family, tmp_path, kwargs, message):
    with pytest.raises(ExtractionError, match=message):
        extract_lora(family["base"], family["tune-late"], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_a_model_that_is_not_a_fine_tune_of_the_base(family, tmp_path):
    from tests.registry.zoo import llama_like

    other = llama_like(tmp_path / "other", hidden=16)
    with pytest.raises(ExtractionError):
        extract_lora(family["base"], other, tmp_path / "y", rank=2)
