"""Reads of the registry: model lists, component trees, compatibility."""

from __future__ import annotations

from pathlib import Path

from django.db.models import QuerySet

from apps.registry.models import DiscoveredModel, ScanRoot
from audobon_site.access import UNSET, is_admin, resolve_user, visible_q


def models_visible(*, user=UNSET) -> QuerySet[DiscoveredModel]:
    """Registered models `user` may see: those whose library asset they may see, and the
    found-but-unregistered ones (errors in the shared scan roots) for admins."""
    user = resolve_user(user)
    qs = DiscoveredModel.objects.select_related("asset")
    if user is None or is_admin(user):
        return qs
    return qs.filter(asset__isnull=False).filter(visible_q(user, "asset__"))


def models_list(*, query: str = "", include_missing: bool = False, user=UNSET) -> QuerySet[DiscoveredModel]:
    qs = models_visible(user=user)
    if not include_missing:
        qs = qs.filter(missing=False)
    if query:
        qs = qs.filter(name__icontains=query) | qs.filter(architecture__icontains=query)
    return qs.order_by("name")


def scan_roots() -> QuerySet[ScanRoot]:
    return ScanRoot.objects.order_by("path")


def model_get(*, model_id: int, user=UNSET) -> DiscoveredModel | None:
    return models_visible(user=user).filter(pk=model_id).first()


def compatibility(*, models: list[DiscoveredModel]) -> dict:
    """What each pair of the given models allows, with every "no" explained."""
    from apps.registry.engine.compat import compatibility_matrix
    from apps.registry.engine.model import read_model

    files = {m.name: read_model(Path(m.path)) for m in models}
    return compatibility_matrix(files)


def compatible_components(*, model: DiscoveredModel, component_id: str) -> list[dict]:
    """Every component in the registry with the same kind and signature as this one."""
    target = _find_component(model.report.get("components", []), component_id)
    if target is None:
        return []
    matches = []
    for other in models_visible().filter(missing=False, error="").exclude(report={}):
        for comp in _walk(other.report.get("components", [])):
            if (comp["kind"], comp["signature"]) == (target["kind"], target["signature"]) and not (
                    other.pk == model.pk and comp["id"] == component_id):
                matches.append({"model": other, "component": comp})
    return matches


def _walk(components: list[dict]):
    for comp in components:
        yield comp
        yield from _walk(comp.get("children") or [])


def _find_component(components: list[dict], component_id: str) -> dict | None:
    return next((c for c in _walk(components) if c["id"] == component_id), None)
