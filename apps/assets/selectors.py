"""Reads for the library pages and commands."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Prefetch, QuerySet, Sum

from apps.assets import search
from apps.assets.models import Asset, AssetVersion, Tag
from audobon_site.access import UNSET, resolve_user, visible_q

PAGE_SIZE = 25


@dataclass
class LibraryPage:
    assets: list[Asset]
    total: int
    page: int
    pages: int
    kind_counts: list[tuple[str, int]]
    tag_counts: list[tuple[str, int]]
    problems: list[str]


def assets_live() -> QuerySet[Asset]:
    return Asset.objects.filter(trashed_at__isnull=True)


def assets_visible(*, user=UNSET) -> QuerySet[Asset]:
    """The assets `user` may see (theirs, their groups', everyone's; all for an admin).
    `user=None` is the local command line acting for no account: everything. Not given:
    whom the running code acts for (the request's user, the job's owner)."""
    user = resolve_user(user)
    if user is None:
        return Asset.objects.all()
    return Asset.objects.filter(visible_q(user))


def versions_visible(*, user=UNSET) -> QuerySet[AssetVersion]:
    user = resolve_user(user)
    if user is None:
        return AssetVersion.objects.all()
    return AssetVersion.objects.filter(visible_q(user, "asset__"))


def library_search(*, query: str = "", user=UNSET, page: int = 1, trashed: bool = False,
                   page_size: int = PAGE_SIZE) -> LibraryPage:
    parsed = search.parse_query(query)
    user = resolve_user(user)
    sees_all = user is None or getattr(user, "is_superuser", False)
    base = assets_visible(user=user).filter(trashed_at__isnull=not trashed)
    qs = search.apply_filters(base, parsed, user=user)
    total = qs.count()
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    assets = list(qs.select_related("owner").prefetch_related("tags")
                  .order_by("-updated_at")[(page - 1) * page_size: page * page_size])
    kind_counts = list(qs.order_by().values_list("kind").annotate(n=Count("id")).order_by("-n"))
    return LibraryPage(assets, total, page, pages, kind_counts,
                       _tag_counts(qs, everything=not (parsed.words or parsed.filters) and sees_all,
                                   trashed=trashed),
                       parsed.problems)


def _tag_counts(qs: QuerySet[Asset], *, everything: bool, trashed: bool) -> list[tuple[str, int]]:
    """The 20 most used tags in the result, counted on the tag links alone."""
    links = Asset.tags.through.objects.all()
    if everything and not trashed:
        # The whole library: leave out the (few) trashed assets instead of listing the rest.
        links = links.exclude(
            asset_id__in=Asset.objects.filter(trashed_at__isnull=False).values("id"))
    else:
        links = links.filter(asset_id__in=qs.order_by().values("id"))
    top = list(links.values_list("tag_id").annotate(n=Count("*")).order_by("-n", "tag_id")[:20])
    names = dict(Tag.objects.filter(pk__in=[t for t, _ in top]).values_list("pk", "name"))
    return [(names[t], n) for t, n in top]


def asset_get(*, name: str, user=UNSET) -> Asset | None:
    """The asset named `name` that `user` may see (None: as if it did not exist)."""
    return assets_visible(user=user).select_related("owner").filter(name=name).first()


def asset_version_get(*, ref: str, user=UNSET) -> AssetVersion:
    """`NAME` (the head) or `NAME@N`, among what `user` may see. Raises LookupError with a
    message naming what is missing (a hidden asset reads as a missing one)."""
    name, _, number = ref.rpartition("@") if "@" in ref else (ref, "", "")
    asset = asset_get(name=name, user=user)
    if asset is None:
        raise LookupError(f"no asset named {name!r}")
    if number:
        if not number.isdigit():
            raise LookupError(f"{ref!r}: the version after @ is a number")
        version = asset.versions.filter(number=int(number)).first()
        if version is None:
            raise LookupError(f"asset {name!r} has no version {number} (it has 1..{asset.head_number})")
        return version
    version = asset.versions.filter(number=asset.head_number).first()
    if version is None:
        raise LookupError(f"asset {name!r} has no version yet")
    return version


def asset_versions(*, asset: Asset, user=UNSET) -> list[AssetVersion]:
    """Its versions, newest first, each with the parents `user` may see."""
    parents = versions_visible(user=user).select_related("asset")
    return list(asset.versions.select_related("created_by", "job")
                .prefetch_related(Prefetch("parents", queryset=parents)).order_by("-number"))


def _walk(start: AssetVersion, relation: str, seen: set, depth: int, user) -> list[list[AssetVersion]]:
    """Levels of versions reached through `parents` or `children`, nearest first; only those
    `user` may see (a hidden version ends its branch)."""
    levels, frontier = [], [start]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            related = getattr(v, relation).select_related("asset")
            if user is not None:
                related = related.filter(visible_q(user, "asset__"))
            for other in related:
                if other.pk not in seen:
                    seen.add(other.pk)
                    nxt.append(other)
        if not nxt:
            break
        levels.append(nxt)
        frontier = nxt
    return levels


def lineage(*, version: AssetVersion, depth: int = 4, user=UNSET) -> dict:
    """Ancestors (parents, their parents…) and descendants of one version, by level, as far
    as `user` may see them."""
    user = resolve_user(user)
    seen = {version.pk}
    ancestors = _walk(version, "parents", seen, depth, user)
    descendants = _walk(version, "children", seen, depth, user)
    edges = [(p.pk, v.pk) for level in [*ancestors, [version], *descendants] for v in level
             for p in v.parents.all() if p.pk in seen]
    return {"ancestors": ancestors, "version": version, "descendants": descendants,
            "edges": edges}


def storage_usage(*, assets: QuerySet[Asset] | None = None) -> dict:
    """Usage by kind, the biggest assets and the trash, over `assets` (default: all)."""
    assets = Asset.objects.all() if assets is None else assets
    live = assets.filter(trashed_at__isnull=True)
    by_kind = list(live.values_list("kind").annotate(n=Count("id"), b=Sum("size_bytes")).order_by("-b"))
    biggest = list(live.order_by("-size_bytes")[:20])
    trashed = assets.filter(trashed_at__isnull=False).aggregate(n=Count("id"), b=Sum("size_bytes"))
    return {"by_kind": by_kind, "biggest": biggest, "trashed": trashed}
