"""Model diff: per-tensor relative L2 and cosine, streamed chunk by chunk; the heatmap."""

import json
import tracemalloc

import numpy as np
import pytest

from apps.monitoring.engine.reporter import JobCancelled
from apps.registry.engine import diff as diff_engine
from apps.registry.engine.diff import DiffResult, diff_models, heatmap_png
from apps.registry.engine.model import read_model
from apps.registry.engine.tensor_io import ShardFiles, read_chunk

from .tiny_models import llama_config, llama_tensors, write_llama, write_model


def nudged(tensors, *, seed, scale, strong=(), strong_scale=0.0):
    """tensors + noise relative to each tensor's RMS; layers in `strong` get more."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in tensors.items():
        s = strong_scale if any(f".layers.{i}." in name for i in strong) else scale
        rms = np.sqrt(np.mean(w.astype(np.float64) ** 2))
        out[name] = (w + rng.standard_normal(w.shape) * rms * s).astype(w.dtype)
    return out


class Recorder:
    def __init__(self, cancel_after=None):
        self.steps, self.cancel_after = [], cancel_after

    def step(self, done, total=None, **metrics):
        self.steps.append((done, total))

    def log(self, msg):
        pass

    def cancelled(self):
        return self.cancel_after is not None and len(self.steps) >= self.cancel_after


def test_a_model_against_itself(tmp_path):
    model = read_model(write_llama(tmp_path / "m", layers=3))
    reporter = Recorder()
    result = diff_models(model, model, reporter=reporter)
    assert len(result.tensors) == len(model.tensors) and result.skipped == []
    assert all(t["rel_l2"] == 0.0 and t["cosine"] == pytest.approx(1.0) for t in result.tensors)
    assert result.max_rel_l2 == 0.0
    assert {0, 1, 2, None} == set(result.layers)
    assert {"attention", "mlp", "norm"} <= set(result.layers[0])
    assert reporter.steps[-1] == (len(model.tensors), len(model.tensors))
    json.dumps(result.to_json())


def test_base_against_fine_tunes(tmp_path):
    base = llama_tensors(layers=4, hidden=16, inter=32, seed=1)
    config = llama_config(layers=4, hidden=16, inter=32)
    a = read_model(write_model(tmp_path / "base", base, config))
    b = read_model(write_model(tmp_path / "tune", nudged(base, seed=2, scale=0.01, strong=(2, 3),
                                                         strong_scale=0.2), config))
    result = diff_models(a, b)
    rel = {t["name"]: t["rel_l2"] for t in result.tensors}
    assert all(0 < r < 0.5 for r in rel.values())
    assert 0.005 < rel["model.layers.0.mlp.up_proj.weight"] < 0.02
    assert 0.1 < rel["model.layers.3.mlp.up_proj.weight"] < 0.3
    for t in result.tensors:
        assert t["cosine"] == pytest.approx(1 / np.sqrt(1 + t["rel_l2"] ** 2), abs=0.02)
    # The strongly changed layers stand out in every kind.
    for kind in ("attention", "mlp", "norm"):
        assert min(result.layers[i][kind] for i in (2, 3)) > 5 * max(result.layers[i][kind] for i in (0, 1))
    assert result.max_rel_l2 == max(rel.values())
    # Against a direct numpy computation.
    name = "model.layers.2.self_attn.q_proj.weight"
    x = base[name].astype(np.float64)
    y = nudged(base, seed=2, scale=0.01, strong=(2, 3), strong_scale=0.2)[name]
    assert rel[name] == pytest.approx(np.linalg.norm(x - y) / np.linalg.norm(x), rel=1e-9)


def test_bf16_matches_torch(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g).to(torch.bfloat16)
    y = (x.float() + 0.05 * torch.randn(7, 5, generator=g)).to(torch.bfloat16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_torch({"w": x, "z": torch.zeros(3, dtype=torch.bfloat16)}, str(tmp_path / "a" / "model.safetensors"))
    save_torch({"w": y, "z": torch.zeros(3, dtype=torch.bfloat16)}, str(tmp_path / "b" / "model.safetensors"))
    a, b = read_model(tmp_path / "a"), read_model(tmp_path / "b")
    monkeypatch.setattr(diff_engine, "CHUNK_ELEMENTS", 4)  # chunks that cut across rows
    shards = ShardFiles(a.root)
    try:
        got = read_chunk(shards, a.tensors["w"], 0, 35)
        np.testing.assert_array_equal(got, x.double().flatten().numpy())
    finally:
        shards.close()
    result = diff_models(a, b, components=[])
    t = {r["name"]: r for r in result.tensors}
    xd, yd = x.double().flatten(), y.double().flatten()
    assert t["w"]["rel_l2"] == pytest.approx(float((xd - yd).norm() / xd.norm()), rel=1e-12)
    assert t["w"]["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(xd, yd, dim=0)),
                                             rel=1e-12)
    assert t["z"]["rel_l2"] == 0.0 and t["z"]["cosine"] == 1.0  # zero against zero
    assert result.layers == {None: {"other": pytest.approx(35 / 38 * t["w"]["rel_l2"])}}


def test_f16_against_f32_and_zero_norms(tmp_path):
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_model(tmp_path / "a", {"w": x, "zero": np.zeros(4, np.float32), "grow": np.zeros(4, np.float32)})
    write_model(tmp_path / "b", {"w": x.astype(np.float16), "zero": np.zeros(4, np.float16),
                                 "grow": np.ones(4, np.float16)})
    result = diff_models(read_model(tmp_path / "a"), read_model(tmp_path / "b"), components=[])
    t = {r["name"]: r for r in result.tensors}
    assert t["w"]["rel_l2"] < 1e-3 and t["w"]["cosine"] == pytest.approx(1.0)
    assert t["zero"]["rel_l2"] == 0.0 and t["zero"]["cosine"] == 1.0
    # From nothing to something: the whole of B is new, 1.0; never infinite.
    assert t["grow"]["rel_l2"] == 1.0 and t["grow"]["cosine"] == 0.0


def test_skipped_tensors_say_why(tmp_path):
    a = read_model(write_llama(tmp_path / "a", layers=2))
    deep = llama_tensors(layers=3)
    deep["lm_head.weight"] = np.zeros((40, 8), np.float32)
    b = read_model(write_model(tmp_path / "b", deep))
    result = diff_models(a, b)
    skipped = {s["name"]: s["reason"] for s in result.skipped}
    assert skipped["lm_head.weight"] == "shape [32, 8] vs [40, 8]"
    assert skipped["model.layers.2.mlp.up_proj.weight"] == "only in B"
    assert len(skipped) == 1 + 9
    assert len(result.tensors) == len(a.tensors) - 1


def test_memory_stays_bounded(tmp_path, monkeypatch):
    # Two 4 MB tensors per model; with 64k-element chunks the diff needs well under 1 MB.
    rng = np.random.default_rng(0)
    big = rng.standard_normal((1024, 1024), dtype=np.float32)
    write_model(tmp_path / "a", {"w": big, "v": big[:512]})
    write_model(tmp_path / "b", {"w": big * 1.01, "v": big[:512] * 0.5})
    del big
    a, b = read_model(tmp_path / "a"), read_model(tmp_path / "b")
    monkeypatch.setattr(diff_engine, "CHUNK_ELEMENTS", 65_536)
    tracemalloc.start()
    try:
        result = diff_models(a, b, components=[])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    t = {r["name"]: r["rel_l2"] for r in result.tensors}
    assert t["w"] == pytest.approx(0.01, rel=1e-5) and t["v"] == pytest.approx(0.5, rel=1e-6)
    model_bytes = sum(i.nbytes for i in a.tensors.values())
    assert peak < 65_536 * 8 * 4 < model_bytes / 2, peak


def test_cancel_stops_between_tensors(tmp_path):
    model = read_model(write_llama(tmp_path / "m"))
    reporter = Recorder(cancel_after=3)
    with pytest.raises(JobCancelled, match="after 3 of"):
        diff_models(model, model, reporter=reporter)
    assert len(reporter.steps) == 3


def test_heatmap_png(tmp_path):
    from PIL import Image

    base = llama_tensors(layers=4)
    config = llama_config(layers=4)
    a = read_model(write_model(tmp_path / "a", base, config))
    tuned = nudged(base, seed=1, scale=0.01, strong=(2,), strong_scale=0.3)
    b = read_model(write_model(tmp_path / "b", tuned, config))
    result = diff_models(a, b)
    out = heatmap_png(result, tmp_path / "out" / "heat.png")
    assert out == tmp_path / "out" / "heat.png"
    assert [p.name for p in out.parent.iterdir()] == ["heat.png"]  # no temp file left behind
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        width, height = img.size
        rows = len(diff_engine._rows(result))
        assert rows == 6  # embed/other, layers 0-3, final/head
        assert 200 < width < 800 and rows * 16 < height < rows * 16 + 100
        # Layer 2's cells are darker than layer 0's.
        left, top, cell_h = 84, 22, 16
        row = {label: i for i, (label, _) in enumerate(diff_engine._rows(result))}
        dark = sum(img.getpixel((left + 60, top + row["layer 2"] * cell_h + 1)))
        light = sum(img.getpixel((left + 60, top + row["layer 0"] * cell_h + 1)))
        assert dark < light

    empty = heatmap_png(DiffResult(), tmp_path / "empty.png")
    with Image.open(empty) as img:
        assert img.size[0] > 0
