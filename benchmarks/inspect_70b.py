"""Header-only inspection of a 70B-parameter model: a Llama-70B-shaped folder (hidden 8192,
80 layers, intermediate 28672, vocabulary 128256, BF16, 30 shards with their index) built as
sparse files, ~141 GB apparent and next to nothing on disk, then `inspect_model` on it.

    python benchmarks/inspect_70b.py [--runs 7] [--shards 30]

Targets: inspect <= 100 ms (median) and <= 1 MB read. The baseline in the same run opens
every shard with `safetensors.safe_open(..., framework="numpy")` and lists its keys, which
is what a loader does before it reads a byte of weights. Bytes read are /proc/self/io
`rchar` deltas (read/pread syscalls; memory-mapped pages do not count there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


def llama_70b_tensors(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The tensor names and shapes of LlamaForCausalLM at this config, in layer order."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]


def build(folder: Path, shards: int) -> tuple[int, int]:
    """Write the sharded model: each shard's real header, then a hole to its full size.
    Returns (tensors, apparent bytes)."""
    tensors = [(name, shape, 2 * _numel(shape)) for name, shape in llama_70b_tensors(CONFIG)]
    total = sum(size for _, _, size in tensors)
    target = total / shards
    groups: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
    filled = 0
    for tensor in tensors:  # HF-style: fill a shard up to its share, then start the next
        if filled >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(tensor)
        filled += tensor[2]
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        position = 0
        for name, shape, size in group:
            header[name] = {"dtype": "BF16", "shape": list(shape),
                            "data_offsets": [position, position + size]}
            position += size
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + position)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    return len(tensors), sum(p.stat().st_size for p in folder.iterdir())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def measure(fn: Callable[[], object], runs: int) -> tuple[float, int, object]:
    """Median milliseconds and median bytes read over `runs` calls (after one warm-up)."""
    result = fn()  # warm-up: imports and the page cache are not what is measured
    times, reads = [], []
    for _ in range(runs):
        before_io, start = rchar(), time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
        reads.append(rchar() - before_io)
    return statistics.median(times), int(statistics.median(reads)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--shards", type=int, default=30)
    args = parser.parse_args()

    from safetensors import safe_open

    from apps.registry.engine.inspect import inspect_model

    with tempfile.TemporaryDirectory(prefix="audobon-70b-") as tmp:
        folder = Path(tmp)
        count, apparent = build(folder, args.shards)
        on_disk = sum(os.stat(p).st_blocks * 512 for p in folder.iterdir())
        print(f"model: {count} tensors in {args.shards} shards, {apparent / 1e9:.1f} GB apparent, "
              f"{on_disk / 1e6:.2f} MB on disk")

        shards = sorted(folder.glob("*.safetensors"))
        headers = sum(8 + header_length(p) for p in shards)
        print(f"headers: {headers / 1e3:.1f} KB in all; index.json "
              f"{(folder / 'model.safetensors.index.json').stat().st_size / 1e3:.1f} KB")

        ms, read, result = measure(lambda: inspect_model(folder), args.runs)
        ok = ms <= 100 and read <= 1_000_000
        print(f"inspect_model: median {ms:.1f} ms, {read / 1e3:.1f} KB read, "
              f"{result['parameters'] / 1e9:.2f} B parameters, {len(result['components'])} components "
              f"(target <= 100 ms and <= 1 MB: {'met' if ok else 'MISSED'})")

        def safe_open_keys() -> int:
            keys = 0
            for shard in shards:
                with safe_open(str(shard), framework="numpy") as f:
                    keys += len(list(f.keys()))
            return keys

        base_ms, base_read, keys = measure(safe_open_keys, args.runs)
        # safe_open maps each file and parses the header from the map: rchar does not see
        # those bytes, so its floor is the headers themselves.
        print(f"baseline safe_open(numpy) + keys on every shard: median {base_ms:.1f} ms, "
              f"{base_read / 1e3:.1f} KB read by read() + {headers / 1e3:.1f} KB of headers mapped, "
              f"{keys} keys")
        print(f"ratio inspect / baseline: time {ms / base_ms:.2f}x, "
              f"bytes {read / (base_read + headers):.2f}x (inspect also reads index.json and config.json, "
              "validates every header and builds the catalogue)")


if __name__ == "__main__":
    main()
