"""Writes of synthetic data: generate rows with a registry model (self-instruct) or from
templates, and register them as a dataset version whose parents are the generator model
(and the seed dataset, when the seed tasks came from one).

A run works in `AUDOBON_HOME/work/synth/<cache key>/`, which outlives a cancel or a crash so
the next run of the same spec resumes there; it is removed once the dataset is registered.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.assets import selectors as asset_selectors
from apps.assets import services as asset_services
from apps.assets.models import AssetVersion
from apps.monitoring.engine.reporter import NullReporter
from apps.registry import services as registry_services
from apps.training.engine.synth import (
    DEFAULT_GENERATOR,
    SeedTask,
    SynthError,
    SynthSpec,
    seed_tasks_load,
    spec_identity,
    spec_parse,
)


@dataclass
class SynthInputs:
    generator_dir: Path | None
    generator_version: AssetVersion | None
    seed_dir: Path | None
    seed_version: AssetVersion | None

    @property
    def parents(self) -> list[AssetVersion]:
        return [v for v in (self.generator_version, self.seed_version) if v is not None]


def _resolve(ref: str, what: str) -> tuple[Path, AssetVersion | None]:
    try:
        folder, version = registry_services.resolve_model(ref)
    except registry_services.ModelRefError:
        hint = "; `audobon demo_models --smollm2` adds it" if ref == DEFAULT_GENERATOR else ""
        raise LookupError(f"{what} {ref!r} is neither a folder nor in the library{hint}") from None
    return folder, version  # a folder a scan registered comes with its library version


def synth_inputs(spec: SynthSpec) -> SynthInputs:
    """The generator and seed dataset a spec names; LookupError names what is missing."""
    gen_dir = gen_version = seed_dir = seed_version = None
    if spec.method == "self_instruct":
        gen_dir, gen_version = _resolve(spec.generator, "generator")
        if spec.seed_dataset:
            seed_dir, seed_version = _resolve(spec.seed_dataset, "seed dataset")
    return SynthInputs(gen_dir, gen_version, seed_dir, seed_version)


def _identity(folder: Path | None, version: AssetVersion | None) -> dict | None:
    from apps.registry.engine.discovery import fingerprint

    if version is not None:
        return {"version_id": str(version.pk)}
    if folder is None:
        return None
    return {"path": folder.as_posix(),
            "fingerprint": fingerprint(folder) if folder.is_dir() else _file_fingerprint(folder)}


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def synth_cache_key(spec: SynthSpec, inputs: SynthInputs) -> str:
    """The same spec (name aside) over the same generator and seed data."""
    payload = {"spec": spec_identity(spec),
               "generator": _identity(inputs.generator_dir, inputs.generator_version),
               "seed_dataset": _identity(inputs.seed_dir, inputs.seed_version)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _generator_info(spec: SynthSpec, inputs: SynthInputs) -> dict:
    """What every row's provenance says about the model that wrote it."""
    version = inputs.generator_version
    info: dict = {"ref": spec.generator}
    if version is not None:
        info.update(asset=version.asset.name, version=version.number, version_id=str(version.pk))
    else:
        info.update(_identity(inputs.generator_dir, None) or {})
    return info


def synth_work_dir(key: str) -> Path:
    return settings.AUDOBON_HOME / "work" / "synth" / key


def synth_dataset(*, spec: SynthSpec | dict, owner=None, job=None,
                  reporter=None) -> tuple[AssetVersion, bool]:
    """Generate, filter, de-duplicate and register. Returns (version, reused): the same spec
    over the same inputs returns the version made before, at once."""
    from apps.training.engine.synth import synth_run
    from apps.training.services.dataset import dataset_import

    reporter = reporter or NullReporter()
    if not isinstance(spec, SynthSpec):
        spec = spec_parse(spec)
    name = asset_services.asset_name_check(spec.name)
    inputs = synth_inputs(spec)
    key = synth_cache_key(spec, inputs)
    done = asset_selectors.versions_visible().filter(spec__cache_key=key).select_related("asset").first()
    if done is not None:
        reporter.log(f"this spec over these inputs was generated before: {done}")
        return done, True
    seed_tasks: list[SeedTask] | None = None
    if inputs.seed_dir is not None:
        seed_tasks = spec.seed_tasks + seed_tasks_load(inputs.seed_dir)
    generator = _generator_info(spec, inputs) if spec.method == "self_instruct" else None
    work = synth_work_dir(key)
    result = synth_run(spec, work, generator_dir=inputs.generator_dir, generator_info=generator,
                       seed_tasks=seed_tasks, reporter=reporter)
    stats = result.stats
    reporter.log(f"{stats['kept']} of {stats['generated']} rows kept "
                 f"({stats['removed_by_dedup']} near-duplicates, filters {stats['removed_by_filter']})")
    if not stats["kept"]:
        raise SynthError(f"no row survived the filters and de-duplication ({json.dumps(stats)}); "
                         "nothing registered")
    about = {"method": spec.method, "cache_key": key, "stats": stats,
             "generator": generator}
    # The dataset and the spec that finds it again land together or not at all.
    with transaction.atomic():
        version = dataset_import(
            source=result.rows_path, name=name, fmt="messages", seed=spec.seed,
            validation_fraction=spec.validation_fraction, owner=owner, job=job, parents=inputs.parents,
            extra_metadata={"synth": about}, reporter=reporter)
        # The same rows as the dataset's head come back as that head: it keeps the spec that
        # made it first.
        if "cache_key" not in version.spec:
            version.spec = {**version.spec, "synth": spec.model_dump(mode="json"), "cache_key": key}
            version.save(update_fields=["spec"])
    shutil.rmtree(work, ignore_errors=True)
    return version, False
