"""Merging models whose tokenizers differ: the output tokenizer (base, union, a model's, tokens
added, padded) and every model's embedding and head rows re-ordered to it before the merge, as
mergekit 0.1.5 does it; checked on its own and, where a mergekit venv is given, against
mergekit-yaml itself, tensor for tensor and token for token."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file
from safetensors.torch import load_file

from apps.assembly.engine.executor import execute
from apps.assembly.engine.plan import make_plan
from apps.assembly.engine.recipe import parse_recipe
from tests.registry.zoo import llama_like

A_TOKENS = [f"t{i}" for i in range(64)]
B_TOKENS = [f"t{i}" for i in range(60)] + ["x0", "x1", "x2", "x3"]  # b lacks t60..t63, has x0..x3


def _tokenizer(folder: Path, tokens: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=tokens[0]).save_pretrained(str(folder))


def _rescale(folder: Path, seed: int) -> None:
    """Distinct weights per model, so a row's origin shows in the result."""
    rng = np.random.default_rng(seed)
    tensors = {k: (v + rng.standard_normal(v.shape).astype(np.float32)) for k, v in
               load_np(str(folder / "model.safetensors")).items()}
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    a = llama_like(root / "a", seed=1)
    b = llama_like(root / "b", seed=2)
    _rescale(b, 3)
    _tokenizer(a, A_TOKENS)
    _tokenizer(b, B_TOKENS)
    return {"a": a, "b": b}


def _run(pair, recipe: str, dest: Path) -> dict[str, torch.Tensor]:
    plan = make_plan(parse_recipe(recipe), lambda ref: pair[ref])
    execute(plan, dest, recipe_text=recipe, device="cpu")
    return load_file(str(dest / "model.safetensors"))


LINEAR = """merge_method: linear
models:
  - model: a
    parameters: {weight: 0.3}
  - model: b
    parameters: {weight: 0.7}
dtype: float32
"""


def test_union_reorders_rows_by_token_and_saves_the_union_tokenizer(pair, tmp_path):
    from transformers import AutoTokenizer

    out = _run(pair, LINEAR + "tokenizer_source: union\n", tmp_path / "out")
    a, b = load_file(str(pair["a"] / "model.safetensors")), load_file(str(pair["b"] / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    vocab = tok.get_vocab()
    assert len(vocab) == 68 and all(t in vocab for t in A_TOKENS + B_TOKENS)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        merged = out[name]
        assert merged.shape == (68, 16)
        # a token both have: the weighted mix of each model's own row
        torch.testing.assert_close(merged[vocab["t5"]], 0.3 * a[name][5] + 0.7 * b[name][5])
        # a token only b has: b's row in both models' places, so b's row comes out
        torch.testing.assert_close(merged[vocab["x1"]], b[name][61])
        # a token only a has (b's row 62 is x2, another token)
        torch.testing.assert_close(merged[vocab["t62"]], a[name][62])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 68
    ids = tok("t5 x1 t62")["input_ids"]
    assert ids == [vocab["t5"], vocab["x1"], vocab["t62"]]


def test_added_tokens_their_sources_and_padding(pair, tmp_path):
    recipe = LINEAR + """tokenizer:
  source: base
  pad_to_multiple_of: 32
  tokens:
    "<new>": {source: {kind: zero}}
    "x2": {source: b}
    "t3": {source: {kind: model_token, model: b, token: t7}, force: true}
"""
    out = _run(pair, recipe, tmp_path / "out")
    b = load_file(str(pair["b"] / "model.safetensors"))
    name = "model.embed_tokens.weight"
    merged = out[name]
    assert merged.shape == (96, 16)  # a's 64 tokens + <new> + x2 = 66, padded to 96
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(tmp_path / "out")).get_vocab()
    assert torch.equal(merged[vocab["<new>"]], torch.zeros(16))
    torch.testing.assert_close(merged[vocab["x2"]], b[name][62])
    torch.testing.assert_close(merged[vocab["t3"]], b[name][7])  # forced, in both models
    torch.testing.assert_close(merged[66:], merged[:66].mean(dim=0).expand(30, 16))


# --- against mergekit-yaml ------------------------------------------------------------------------

MERGEKIT_PYTHON = os.environ.get("AUDOBON_MERGEKIT_PYTHON", "")


@pytest.mark.skipif(not MERGEKIT_PYTHON,
                    reason="AUDOBON_MERGEKIT_PYTHON is not set (a venv with mergekit==0.1.5)")
@pytest.mark.parametrize("tokenizer", [
    "tokenizer_source: union",
    "tokenizer_source: base",
    "tokenizer_source: b",
    'tokenizer: {source: union, pad_to_multiple_of: 8, tokens: {"t5": {source: b, force: true}, '
    '"<extra>": {source: {kind: model_token, model: a, token: t0}}}}',
])
@pytest.mark.parametrize("method", ["linear", "ties"])
def test_the_same_model_and_tokenizer_as_mergekit(pair, tmp_path, tokenizer, method):
    from transformers import AutoTokenizer

    if method == "linear":  # a base_model, or mergekit's tokenizer base is an arbitrary model
        recipe = LINEAR.replace("float32", "bfloat16") + "base_model: a\n" + tokenizer + "\n"
    else:
        recipe = ("merge_method: ties\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n"
                  "    parameters: {weight: 0.6, density: 0.5}\ndtype: bfloat16\n" + tokenizer + "\n")
    ours = _run(pair, recipe, tmp_path / "ours")
    resolved = recipe.replace("model: a", f"model: {pair['a']}").replace("model: b", f"model: {pair['b']}")
    resolved = resolved.replace("base_model: a", f"base_model: {pair['a']}")
    resolved = resolved.replace("tokenizer_source: b\n", f"tokenizer_source: {pair['b']}\n")
    resolved = resolved.replace("{source: b,", f"{{source: {pair['b']},").replace(
        "model: a, token", f"model: {pair['a']}, token")
    (tmp_path / "mk.yaml").write_text(resolved)
    mergekit = Path(MERGEKIT_PYTHON).with_name("mergekit-yaml")
    done = subprocess.run([str(mergekit), str(tmp_path / "mk.yaml"), str(tmp_path / "mk"), "--quiet",
                           "--no-write-model-card"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = {}
    for f in sorted((tmp_path / "mk").glob("*.safetensors")):
        theirs.update(load_file(str(f)))
    assert set(ours) == set(theirs)
    vo = AutoTokenizer.from_pretrained(str(tmp_path / "ours")).get_vocab()
    vt = AutoTokenizer.from_pretrained(str(tmp_path / "mk")).get_vocab()
    assert set(vo) == set(vt)
    base_tokens = B_TOKENS if tokenizer == "tokenizer_source: b" else A_TOKENS
    assert all(vo[t] == vt[t] for t in base_tokens)  # the base keeps its ids; new tokens may move
    for name, t in theirs.items():
        assert ours[name].dtype == t.dtype and ours[name].shape == t.shape, name
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            for token in vt:  # token by token: the same embedding
                assert torch.equal(ours[name][vo[token]], t[vt[token]]), (name, token)
            # padding rows: the mean of the rows, summed in token order: within an ulp
            torch.testing.assert_close(ours[name][len(vt):], t[len(vt):], rtol=2**-7, atol=0)
        else:
            assert torch.equal(ours[name], t), name
