"""read_model and inspect_model: folder layouts (single file, shards with an index, PEFT
adapters, pickle-only), index and shard defects, tokenizer facts, license, architecture
from config or tensor names, and the stable `audobon.inspect/1` schema."""

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.registry.engine.header import (
    BadIndexError,
    BadOffsetsError,
    DuplicateTensorError,
    HeaderError,
    MissingShardError,
)
from apps.registry.engine.inspect import SCHEMA, inspect_model
from apps.registry.engine.model import PICKLE_WARNING, read_model

from . import builders as b
from .test_components import minilm_dir

TOP_KEYS = ["schema", "path", "format", "architecture", "parameters", "bytes", "dtypes", "shards",
            "components", "tokenizer", "adapter", "facts", "warnings", "license"]
COMPONENT_KEYS = ["id", "kind", "layer", "params", "bytes", "dtypes", "signature", "tensors", "children"]
FACT_KEYS = ["tensors", "layers", "vocab", "hidden_size", "tied_embeddings", "aliases", "quantization",
             "config_mismatches", "pickle_files", "extra_safetensors", "generation_config", "license_source"]
TOKENIZER_KEYS = ["files", "type", "vocab_size", "added_tokens", "special_tokens", "chat_template",
                  "max_length", "tokenizer_class"]


def assert_schema(result: dict) -> None:
    assert list(result) == TOP_KEYS
    assert result["schema"] == SCHEMA == "audobon.inspect/1"
    assert list(result["architecture"]) == ["model_type", "architectures", "source"]
    assert list(result["facts"]) == FACT_KEYS
    assert list(result["tokenizer"]) == TOKENIZER_KEYS
    assert list(result["tokenizer"]["special_tokens"]) == ["bos", "eos", "pad", "unk"]
    for shard in result["shards"]:
        assert list(shard) == ["file", "tensors", "bytes", "metadata"]
    stack = list(result["components"])
    while stack:
        component = stack.pop()
        assert list(component) == COMPONENT_KEYS
        assert all(list(t) == ["name", "dtype", "shape"] for t in component["tensors"])
        stack.extend(component["children"])
    assert json.loads(json.dumps(result)) == result  # plain JSON all the way down


def test_schema_is_stable_for_every_format(tmp_path):
    full = b.write_model(tmp_path / "full", b.llama(), b.llama_config(), shards=2)
    b.tokenizer_files(full)
    (full / "generation_config.json").write_text(json.dumps({"max_new_tokens": 64}))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (full, pickled, empty, full / "model-00001-of-00002.safetensors"):
        assert_schema(inspect_model(folder))
    result = inspect_model(full)
    assert result["format"] == "safetensors"
    assert result["architecture"] == {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                      "source": "config"}
    assert result["parameters"] == sum(c["params"] for c in result["components"])
    assert result["dtypes"] == {"F32": result["parameters"]}
    assert result["facts"]["generation_config"] == {"max_new_tokens": 64}
    assert result["warnings"] == []
    assert inspect_model(empty)["format"] == "none"


def test_real_minilm_inspects_fast_and_completely():
    start = time.perf_counter()
    result = inspect_model(minilm_dir())
    assert time.perf_counter() - start < 1.0
    assert_schema(result)
    assert result["architecture"] == {"model_type": "bert", "architectures": ["BertModel"],
                                      "source": "config"}
    assert (result["parameters"], result["bytes"]) == (22_713_728, 90_856_960)
    assert result["license"] == "apache-2.0" and result["facts"]["license_source"] == "readme"
    assert result["tokenizer"]["type"] == "WordPiece" and result["tokenizer"]["vocab_size"] == 30522
    assert result["tokenizer"]["special_tokens"]["unk"] == "[UNK]"
    assert result["tokenizer"]["max_length"] == 512
    assert result["facts"]["layers"]["found"] == 6 and result["warnings"] == []


def test_inspect_imports_no_heavy_library(tmp_path):
    folder = b.write_model(tmp_path / "m", b.llama(), b.llama_config())
    code = ("import sys; from pathlib import Path; from apps.registry.engine.inspect import inspect_model; "
            f"inspect_model(Path({str(folder)!r})); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'django') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------- sharded


def test_sharded_model_reads_every_shard(tmp_path):
    folder = b.write_model(tmp_path / "sharded", b.llama(layers=3), b.llama_config(layers=3), shards=3)
    model = read_model(folder)
    assert model.shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert {t.file for t in model.tensors.values()} == set(model.shards)
    result = inspect_model(folder)
    assert [s["file"] for s in result["shards"]] == model.shards
    assert sum(s["tensors"] for s in result["shards"]) == len(b.llama(layers=3))
    assert sum(s["bytes"] for s in result["shards"]) == result["bytes"]
    assert result["warnings"] == []
    edit_index(folder, lambda d: d["metadata"].update(total_size=1))
    assert any("says total_size 1 bytes" in w for w in inspect_model(folder)["warnings"])


def test_missing_shard(tmp_path):
    folder = b.write_model(tmp_path / "sharded", b.llama(), b.llama_config(), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingShardError) as err:
        read_model(folder)
    assert "model.safetensors.index.json" in str(err.value)
    assert "model-00002-of-00002.safetensors" in str(err.value)


def edit_index(folder: Path, change) -> None:
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    change(data)
    index.write_text(json.dumps(data))


def test_index_naming_a_tensor_absent_from_its_shard(tmp_path):
    folder = b.write_model(tmp_path / "sharded", b.llama(), b.llama_config(), shards=2)
    shard = "model-00001-of-00002.safetensors"
    edit_index(folder, lambda d: d["weight_map"].update({"model.ghost.weight": shard}))
    with pytest.raises(BadIndexError) as err:
        inspect_model(folder)
    for needle in ("model.safetensors.index.json", "'model.ghost.weight'", shard):
        assert needle in str(err.value)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "JSON"),
    ("[]", "weight_map"),
    ('{"weight_map": {"a": 1}}', "weight_map"),
    ('{"weight_map": {"a": "../outside.safetensors"}}', "not a plain file name"),
])
def test_invalid_index(tmp_path, content, needle):
    folder = b.write_model(tmp_path / "sharded", b.llama(), b.llama_config(), shards=2)
    (folder / "model.safetensors.index.json").write_text(content)
    with pytest.raises(BadIndexError, match=needle) as err:
        read_model(folder)
    assert "model.safetensors.index.json" in str(err.value)


def test_tensors_left_out_of_the_index_are_a_warning(tmp_path):
    folder = b.write_model(tmp_path / "sharded", b.llama(), b.llama_config(), shards=2)
    edit_index(folder, lambda d: d["weight_map"].pop("lm_head.weight"))
    assert any("1 tensors are in the shards but not in" in w for w in read_model(folder).warnings)


def test_a_tensor_in_two_files(tmp_path):
    folder = tmp_path / "twice"
    folder.mkdir()
    b.save(folder / "a.safetensors", {"shared.weight": ((2,), "float32")})
    b.save(folder / "b.safetensors", {"shared.weight": ((2,), "float32")})
    with pytest.raises(DuplicateTensorError) as err:
        read_model(folder)
    assert "'shared.weight'" in str(err.value) and "a.safetensors" in str(err.value)
    assert "b.safetensors" in str(err.value)


def test_a_broken_shard_raises_a_header_error_naming_it(tmp_path):
    folder = b.write_model(tmp_path / "sharded", b.llama(), b.llama_config(), shards=2)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(BadOffsetsError) as err:
        inspect_model(folder)
    assert isinstance(err.value, HeaderError) and str(shard) in str(err.value)


def test_extra_safetensors_are_listed_not_merged(tmp_path):
    folder = b.write_model(tmp_path / "m", b.llama(), b.llama_config())
    b.save(folder / "consolidated.safetensors", {"tok_embeddings.weight": ((32, 8), "float32")})
    result = inspect_model(folder)
    assert result["facts"]["extra_safetensors"] == ["consolidated.safetensors"]
    assert [s["file"] for s in result["shards"]] == ["model.safetensors"]
    assert any("consolidated.safetensors" in w for w in result["warnings"])


def test_other_safetensors_names_are_merged_when_alone(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    b.save(folder / "part-a.safetensors", {"x.0.w": ((2,), "float32")})
    b.save(folder / "part-b.safetensors", {"x.1.w": ((2,), "float32")})
    assert read_model(folder).shards == ["part-a.safetensors", "part-b.safetensors"]


# --------------------------------------------------------------------- pickle, adapter, file


class Tripwire:
    """Unpickling this creates `marker`: proof that something loaded the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_folder_is_flagged_and_never_unpickled(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    for name in ("pytorch_model.bin", "training_args.bin", "model.ckpt"):
        (folder / name).write_bytes(pickle.dumps(Tripwire(marker)))
    (folder / "config.json").write_text(json.dumps(b.llama_config()))
    result = inspect_model(folder)
    assert not marker.exists()
    assert result["format"] == "pickle-only"
    assert result["parameters"] is None and result["components"] == [] and result["shards"] == []
    assert result["facts"]["pickle_files"] == ["model.ckpt", "pytorch_model.bin", "training_args.bin"]
    assert any(PICKLE_WARNING in w for w in result["warnings"])
    assert PICKLE_WARNING == "pickle weights are not read; convert to safetensors"
    assert inspect_model(folder / "pytorch_model.bin")["format"] == "pickle-only"
    assert not marker.exists()


def test_pickle_beside_safetensors_is_listed(tmp_path):
    folder = b.write_model(tmp_path / "both", b.llama(), b.llama_config())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    result = inspect_model(folder)
    assert result["format"] == "safetensors" and result["facts"]["pickle_files"] == ["pytorch_model.bin"]
    assert any(PICKLE_WARNING in w for w in result["warnings"])


def test_peft_adapter_folder(tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
        "base_model_name_or_path": "tiny-llama"}))
    spec = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight": (shape, "float32")
            for i in range(2) for ab, shape in (("A", (2, 8)), ("B", (8, 2)))}
    b.save(folder / "adapter_model.safetensors", spec)
    result = inspect_model(folder)
    assert result["format"] == "peft-adapter"
    assert result["adapter"]["r"] == 2 and result["adapter"]["rank_found"] == [2]
    assert result["adapter"]["base_model"] == "tiny-llama"
    assert result["architecture"]["source"] == "tensor-names"
    assert result["architecture"]["model_type"] == "llama"
    assert result["warnings"] == []  # an adapter has no config.json, and needs none


def test_a_single_safetensors_file(tmp_path):
    path = b.save(tmp_path / "weights.safetensors", b.gpt2(), metadata={"format": "pt"})
    result = inspect_model(path)
    assert result["format"] == "safetensors" and result["path"] == str(path)
    assert result["shards"][0]["file"] == "weights.safetensors"
    assert result["shards"][0]["metadata"] == {"format": "pt"}
    assert result["architecture"] == {"model_type": "gpt2", "architectures": [], "source": "tensor-names"}
    assert any("no config.json" in w for w in result["warnings"])


# ------------------------------------------------------------------ architecture, tokenizer


@pytest.mark.parametrize("spec, family", [
    (b.llama(), "llama"), (b.gpt2(), "gpt2"), (b.bert(), "bert"), (b.llava(), "llava"),
    ({"net.blocks.0.w": ((2,), "float32")}, None),
])
def test_architecture_from_tensor_names_without_config(tmp_path, spec, family):
    result = inspect_model(b.write_model(tmp_path / "noconfig", spec))
    assert result["architecture"] == {"model_type": family, "architectures": [], "source": "tensor-names"}
    expected = f"guessed as {family}" if family else "architecture unknown"
    assert any(w.startswith("no config.json") and expected in w for w in result["warnings"])


def test_config_mismatches_become_warnings(tmp_path):
    folder = b.write_model(tmp_path / "bad", b.llama(layers=2), b.llama_config(layers=4, vocab=99))
    result = inspect_model(folder)  # does not raise: the scan still records the model
    assert len(result["facts"]["config_mismatches"]) == 2
    assert all(p in result["warnings"] for p in result["facts"]["config_mismatches"])


def test_tokenizer_facts_from_tokenizer_json(tmp_path):
    folder = b.write_model(tmp_path / "tok", b.llama(), b.llama_config())
    b.tokenizer_files(folder, vocab=30, added=2)
    tok = inspect_model(folder)["tokenizer"]
    assert tok == {"files": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
                   "type": "BPE", "vocab_size": 32, "added_tokens": 2,
                   "special_tokens": {"bos": "<s0>", "eos": "<s1>", "pad": "<s1>", "unk": "<unk>"},
                   "chat_template": True, "max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}


def test_tokenizer_facts_from_vocab_txt_and_sentencepiece(tmp_path):
    folder = b.write_model(tmp_path / "wp", b.bert(), b.bert_config())
    (folder / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(32)))
    config = {"model_max_length": 10**30, "unk_token": "[UNK]"}  # transformers' "no limit"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = inspect_model(folder)["tokenizer"]
    assert (tok["type"], tok["vocab_size"], tok["max_length"], tok["special_tokens"]["unk"]) == (
        "WordPiece", 32, None, "[UNK]")

    folder = b.write_model(tmp_path / "sp", b.llama(), b.llama_config())
    pieces = b"".join(b"\x0a" + bytes([len(p)]) + p for p in (b"\x0a\x01a",) * 32)
    trainer = b"\x12\x02\x18\x02"  # TrainerSpec { model_type: BPE }
    (folder / "tokenizer.model").write_bytes(trainer + pieces)
    tok = inspect_model(folder)["tokenizer"]
    assert (tok["type"], tok["vocab_size"], tok["chat_template"]) == ("BPE", 32, False)


def test_broken_tokenizer_and_config_files_are_warnings(tmp_path):
    folder = b.write_model(tmp_path / "m", b.llama(), None)
    (folder / "config.json").write_text("{broken")
    (folder / "tokenizer.json").write_text("[]")
    result = inspect_model(folder)
    assert result["tokenizer"]["vocab_size"] is None
    assert any(w.startswith("config.json could not be read") for w in result["warnings"])
    assert any("tokenizer.json" in w for w in result["warnings"])


# -------------------------------------------------------------------------------- license


def test_license_from_readme_license_file_or_config(tmp_path):
    folder = b.write_model(tmp_path / "m", b.llama(), b.llama_config(license="from-config"))
    assert (inspect_model(folder)["license"], inspect_model(folder)["facts"]["license_source"]) == (
        "from-config", "config")
    (folder / "LICENSE.txt").write_text("MIT License")
    assert inspect_model(folder)["license"] == "LICENSE.txt"
    (folder / "README.md").write_text("---\nlanguage: en\nlicense: llama3.2\ntags:\n- x\n---\n# Model\n")
    assert inspect_model(folder)["license"] == "llama3.2"
    (folder / "README.md").write_text("---\nlicense:\n  - 'mit'\n---\n")
    assert inspect_model(folder)["license"] == "mit"
    (folder / "README.md").write_text("# no front matter\nlicense: not-this\n")
    assert inspect_model(folder)["license"] == "LICENSE.txt"
    bare = b.write_model(tmp_path / "bare", b.llama(), b.llama_config())
    assert inspect_model(bare)["license"] is None
