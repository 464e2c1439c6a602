"""Writes of assembly: plan and run recipes, extract LoRA adapters and components; every
result goes into the library with its parents, the job and the recipe."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.assembly.engine.plan import ModelNotFoundError, ModelReadError, Plan, PlanError, make_plan
from apps.assembly.engine.recipe import parse_recipe
from apps.assembly.models import Recipe
from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.engine.safeparse import json_loads
from apps.assets.models import AssetVersion
from apps.assets.roots import PathNotAllowedError, web_path_check
from apps.assets.storage_report import assembly_cached
from apps.monitoring.engine.reporter import NullReporter
from apps.monitoring.startup import on_startup
from apps.registry import services as registry_services
from audobon_site.access import UNSET, Visibility, can_change, resolve_user, visible_q

DEFAULT_VALIDATION_SAMPLES = 16
DEFAULT_PROMPTS = ["The json module", "In Python, a list"]


class GateFailedError(RuntimeError):
    """The result failed a validation gate: it is not registered."""


class OutWriteError(OSError):
    """The result is registered, but its copy for `--out` could not be written."""


def _work_dir() -> Path:
    return asset_services.work_dir("assemble")


@on_startup("folders of interrupted assembly runs removed")
def assembly_startup_clean() -> int:
    """A run killed mid-way leaves only its work folder: nothing was registered."""
    return asset_services.work_area_clear("assemble")


# --- resolving model references ---------------------------------------------------------------

class RecipeNameTaken(ValueError):
    """A saved recipe of that name belongs to someone else."""


def recipes_visible(*, user=UNSET):
    """Saved recipes `user` may see (default: whom the running code acts for)."""
    user = resolve_user(user)
    qs = Recipe.objects.select_related("owner")
    return qs if user is None else qs.filter(visible_q(user))


def recipe_save(*, name: str, text: str, owner, visibility: str | None = None) -> Recipe:
    """Save (or update) recipe `name`, seen by `visibility` (default: as it was, or the
    site's default). Another user's recipe is never overwritten, even when it is shared:
    its name is taken."""
    name = name.strip()
    if not name:
        raise ValueError("give the recipe a name")
    if visibility is not None and visibility not in (Visibility.PRIVATE, Visibility.EVERYONE):
        raise ValueError(f"visibility {visibility!r}: private or everyone (a group: `audobon share`)")
    with transaction.atomic():
        recipe = Recipe.objects.select_for_update().filter(name=name).first()
        if recipe is None:
            extra = {"visibility": visibility} if visibility else {}
            return Recipe.objects.create(name=name[:200], text=text, owner=owner, **extra)
        if owner is not None and not can_change(owner, recipe):
            raise RecipeNameTaken(f"the recipe name {name!r} is taken by someone else's recipe: "
                                  "choose another name")
        recipe.text = text
        fields = ["text", "updated_at"]
        if visibility:
            recipe.visibility, recipe.group = visibility, None
            fields += ["visibility", "group"]
        recipe.save(update_fields=fields)
        return recipe


def resolve_reference(ref: str, *, web: bool = False) -> tuple[Path, AssetVersion | None]:
    """A model, adapter or dataset a recipe names, through the registry's one resolver
    (`registry.services.resolve_model`), as a LookupError in the planner's words."""
    try:
        return registry_services.resolve_model(ref, web=web)
    except registry_services.PathRefusedError as exc:
        raise LookupError(str(exc)) from None
    except registry_services.ModelRefError as exc:
        if "is not in the registry" in str(exc):
            raise LookupError(str(exc)) from None
        raise LookupError(f"model {ref!r} is not in the registry") from None


# What a broken header is, in words: a plan shown in the browser names the kind of defect,
# never the values read from the file (its first bytes, say, as a "header length").
_HEADER_DEFECTS = {
    "TruncatedFileError": "the file is truncated or too short for a safetensors header",
    "HeaderTooLargeError": "its header length is not plausible",
    "HeaderEncodingError": "its header is not valid JSON text",
    "UnknownDtypeError": "a tensor has an unknown dtype",
    "BadShapeError": "a tensor shape is not valid",
    "BadOffsetsError": "tensor offsets do not fit the file",
    "DuplicateTensorError": "a tensor name appears twice",
    "MissingShardError": "a shard named by the index is missing",
    "BadIndexError": "the shard index is not valid",
    "ConfigMismatchError": "the config does not match the weights",
}


def _without_file_bytes(exc: PlanError) -> PlanError:
    """The same error, its message cut to what the recipe said plus the kind of defect, when it
    wraps a header error (whose message quotes what it read from the file)."""
    from apps.registry.engine.header import HeaderError

    cause = exc.__cause__ or exc.__context__
    if not isinstance(cause, HeaderError):
        return exc
    subject = str(exc).split(": ", 1)[0]
    defect = _HEADER_DEFECTS.get(type(cause).__name__, "it is not a readable safetensors model")
    return type(exc)(f"{subject}: cannot be read: {defect}")


def recipe_plan(text: str, *, web: bool = False) -> Plan:
    """Parse and plan; RecipeError and PlanError carry messages for the user. With `web`, every
    path the recipe names (models, adapters, the validation dataset) must pass the web's
    boundary, and no message quotes bytes read from a file."""
    from apps.registry.engine.header import HeaderError

    recipe = parse_recipe(text)
    try:
        plan = make_plan(recipe, lambda ref: resolve_reference(ref, web=web)[0])
    except PlanError as exc:
        if not web:
            raise
        raise _without_file_bytes(exc) from None
    except (HeaderError, UnicodeError) as exc:
        if not web:
            raise
        defect = _HEADER_DEFECTS.get(type(exc).__name__, "it is not a readable safetensors model")
        raise ModelReadError(f"a model of the recipe cannot be read: {defect}") from None
    if web and recipe.validation and recipe.validation.dataset:
        _web_dataset_check(recipe.validation.dataset)
    return plan


def _web_dataset_check(ref: str) -> None:
    """A validation dataset named in the browser: a library asset, or a path the web may read
    (a file or a folder of .jsonl/.txt/.md)."""
    text = ref.removeprefix("asset:")
    try:
        asset_selectors.asset_version_get(ref=text)
        return
    except LookupError:
        pass
    try:
        web_path_check(text)
    except PathNotAllowedError as exc:
        raise ModelNotFoundError(f"validation dataset {ref!r}: {exc}") from None


def _input_versions(plan: Plan) -> list[AssetVersion]:
    versions = []
    for model in plan.models:
        refs = [model.ref.split("+", 1)[0]] + ([model.adapter["ref"]] if model.adapter else [])
        for ref in refs:
            version = resolve_reference(ref)[1]
            if version and version not in versions:
                versions.append(version)
    return versions


def validation_texts(ref: str, limit: int = 1000) -> list[str]:
    """Texts from a dataset (a path or library asset): JSONL rows' string fields, or lines of
    a text file."""
    folder, _ = registry_services.resolve_model(ref)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file()
                                                      and p.suffix in (".jsonl", ".txt", ".md"))
    texts: list[str] = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if len(texts) >= limit:
                    return texts
                line = line.strip()
                if not line:
                    continue
                if path.suffix == ".jsonl":
                    try:
                        row = json_loads(line, max_bytes=None)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        line = "\n".join(str(v) for v in row.values() if isinstance(v, str))
                texts.append(line)
    if not texts:
        raise LookupError(f"validation dataset {ref!r} holds no text (JSONL, .txt or .md)")
    return texts


def cache_key(plan: Plan, text: str) -> str:
    """The same recipe over the same inputs: the recipe as parsed, and each input's identity
    (library version id, or path with its files' fingerprint)."""
    from apps.registry.engine.discovery import fingerprint

    inputs = []
    for model in plan.models:
        inputs.append([model.ref, str(model.path), fingerprint(Path(model.path))])
        if model.adapter:
            adapter = model.adapter
            inputs.append([adapter["ref"], adapter["path"], fingerprint(Path(adapter["path"]))])
    payload = json.dumps({"recipe": plan.recipe.model_dump(mode="json"), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _in_process(func, *args, **kwargs):
    return func(*args, **kwargs)


def assemble(*, text: str, name: str, owner=None, job=None, reporter=None,
             out: Path | None = None, validate_result: bool = True,
             plan: Plan | None = None, engine=None) -> tuple[AssetVersion, bool]:
    """Plan, run, validate and register. Returns (version, reused): the same recipe over
    the same inputs returns the version made before, at once. With `engine` (a command's
    EngineProcess), the merge and the validation run in it."""
    from apps.assembly.engine.executor import execute, memory_bound

    reporter = reporter or NullReporter()
    name = asset_services.asset_name_check(name)
    plan = plan or recipe_plan(text)  # a job's spec carries the plan it was checked with
    if engine is not None and memory_bound(plan):
        engine.close()  # a long merge whose peak is what counts: in this process, one interpreter
        engine = None
    call = engine.call if engine is not None else _in_process
    if out is not None and (out.exists() or out.is_symlink()):
        raise asset_services.AssetInputError(f"{out} already exists: --out names a new folder")
    key = cache_key(plan, text)
    # Only a result its owner may see is reused: another user's private merge is not theirs.
    done = (assembly_cached() & asset_selectors.versions_visible()).filter(
        spec__cache_key=key).select_related("asset").first()
    if done is not None:
        reporter.log(f"this recipe over these inputs was assembled before: {done}")
        if out is not None:  # still written where it was asked for, from the library
            asset_services.asset_version_export(version=done, dest=out, reporter=reporter)
        return done, True
    parents = _input_versions(plan)
    work = _work_dir()
    # `--out` is written beside the result, from the same bytes, into a hidden sibling; it is
    # put in place only once the version exists, and removed if anything before that fails.
    staged = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}" if out is not None else None
    try:
        folder = work / "model"
        reporter.log(f"{plan.method}: {len(plan.outputs)} tensors from {len(plan.models)} models")
        if staged is not None:
            staged.parent.mkdir(parents=True, exist_ok=True)
        result = call(execute, plan, folder, recipe_text=text, reporter=reporter, mirror=staged,
                      card_lines=["## Lineage", "", *[f"- {v}" for v in parents]])
        reporter.log(f"wrote {result.bytes / 1e6:.1f} MB in {result.seconds:.1f}s on {result.device}")
        report = _validate(plan, folder, validate_result, reporter, call)
        if not report.ok:
            failed = [g for g in report.gates if not g["ok"]]
            raise GateFailedError("validation gate failed, nothing registered: " + "; ".join(
                f"{g['metric']} = {g['value']!r} (limit {g.get('max', g.get('min'))})" for g in failed))
        # The weights were hashed as they were written: the store takes them by hard link,
        # without reading them again.
        store = asset_services.blob_store()
        for file, sha in result.hashes.items():
            store.hash_cache.put(os.stat(folder / file), sha)
        # Made complete in one step: versions are immutable once registered.
        version = asset_services.asset_import(
            source=folder, kind="model", name=name, link=True, parents=parents, job=job, owner=owner,
            message=f"assembled with {plan.method}",
            description=f"Assembled by a {plan.method} recipe from {', '.join(m.ref for m in plan.models)}.",
            spec={"recipe": text, "cache_key": key, "method": plan.method,
                  "models": [m.ref for m in plan.models]},
            metadata={"validation": report.to_json(),
                      "assembly": {"method": plan.method, "tensors": result.tensors,
                                   "seconds": round(result.seconds, 2), "device": result.device}},
        )
        if staged is not None:
            try:
                if out.exists() or out.is_symlink():
                    raise FileExistsError(f"{out} appeared while the model was being written")
                os.rename(staged, out)
            except OSError as exc:
                raise OutWriteError(f"{version} is registered, but writing {out} failed: {exc}; "
                                    f"`audobon export_asset {version} DIR` writes it again") from exc
        return version, False
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _validate(plan: Plan, folder: Path, validate_result: bool, reporter, call=_in_process):
    """The result validated against its parents, unless turned off on purpose (`--no-validate`,
    `validation: {enabled: false}`), which the report records; the recipe's `validation:`
    block tunes it and adds gates."""
    from apps.assembly.engine.validation import ValidationReport, validate

    spec = plan.recipe.validation
    off = ("turned off for this run (--no-validate)" if not validate_result else
           "turned off by the recipe (validation: {enabled: false})"
           if spec is not None and not spec.enabled else None)
    parent_dirs = {m.ref: Path(m.path) for m in plan.models if set(m.roles) & {"source", "base"}}
    if off:
        reporter.log(f"validation {off}")
        return ValidationReport(losses={}, perplexities={}, notes=[f"validation {off}"],
                                skipped={label: off for label in ["result", *parent_dirs]})
    peak = plan.estimate.validation_peak_memory_bytes
    reporter.log(f"validating against the parents (about {peak / 2**30:.2f} GiB at most, "
                 "one model at a time)")
    budget = getattr(settings, "AUDOBON_VALIDATION_MEMORY", None)  # bytes; default: what is free
    return call(validate, folder, parent_dirs, memory_budget=int(budget) if budget else None,
                max_samples=(spec and spec.max_samples) or DEFAULT_VALIDATION_SAMPLES,
                texts=validation_texts(spec.dataset) if spec and spec.dataset else None,
                prompts=list(spec.samples) if spec and spec.samples else DEFAULT_PROMPTS,
                gates=[g.model_dump(exclude_none=True) for g in spec.gates] if spec else [])


def lora_extract(*, base: str, tuned: str, rank: int | None, energy: float | None, name: str | None,
                 out: Path | None = None, owner=None, job=None, reporter=None) -> AssetVersion:
    from apps.assembly.engine.lora_extract import extract_lora

    base_dir, base_v = registry_services.resolve_model(base)
    tuned_dir, tuned_v = registry_services.resolve_model(tuned)
    work = _work_dir()
    try:
        folder = work / "adapter"
        extract_lora(base_dir, tuned_dir, folder, rank=rank, energy=energy, reporter=reporter)
        if out is not None:
            shutil.copytree(folder, out)
        label = f"rank {rank}" if rank else f"energy {energy}"
        return asset_services.asset_import(
            source=folder, kind="adapter", link=True, owner=owner, job=job,
            name=name or f"lora {Path(tuned).name} from {Path(base).name}".replace("@", " v"),
            parents=[v for v in (base_v, tuned_v) if v], message=f"LoRA extracted ({label})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def components_extract(*, model: str, select: list[str], name: str | None, out: Path | None = None,
                       owner=None, job=None, reporter=None) -> AssetVersion:
    from apps.assembly.engine.component_extract import extract_components

    model_dir, version = registry_services.resolve_model(model)
    work = _work_dir()
    try:
        folder = work / "component"
        record = extract_components(model_dir, select, folder, reporter=reporter)
        if out is not None:
            shutil.copytree(folder, out)
        ids = ", ".join(c["id"] for c in record["components"])
        asset = asset_services.asset_import(
            source=folder, kind="component", link=True, owner=owner, job=job,
            name=name or f"{Path(model).name} {' '.join(select)}".replace("@", " v")[:200],
            parents=[version] if version else [], message=f"components {ids}")
        asset.metadata = {**asset.metadata, "components": record["components"], "origin": record["origin"]}
        asset.save(update_fields=["metadata"])
        return asset
    finally:
        shutil.rmtree(work, ignore_errors=True)
