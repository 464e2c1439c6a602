"""The library's search language and full-text index.

`llama chat kind:model tag:base arch:llama created:>2026-01-01 parent:NAME owner:me`
Free words match name, description, tags and metadata values (prefix match, all words
must match). Filters narrow by field. SQLite uses FTS5, PostgreSQL a GIN-indexed tsvector.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

FILTER_KEYS = {"kind", "tag", "arch", "created", "updated", "parent", "owner", "category", "name"}
_DATE_OP = re.compile(r"^(>=|<=|>|<|=)?(\d{4}-\d{2}-\d{2})$")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class ParsedQuery:
    words: list[str] = field(default_factory=list)
    filters: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_query(text: str) -> ParsedQuery:
    parsed = ParsedQuery()
    try:
        tokens = shlex.split(text or "")
    except ValueError:  # an unclosed quote while typing: take the words as they are
        tokens = (text or "").replace('"', " ").replace("'", " ").split()
    for token in tokens:
        key, sep, value = token.partition(":")
        if sep and key.lower() in FILTER_KEYS and value:
            key = key.lower()
            if key in ("created", "updated") and not _DATE_OP.match(value):
                parsed.problems.append(f"{key}:{value} — dates look like {key}:>2026-01-01")
                continue
            parsed.filters.append((key, value))
        else:
            parsed.words.extend(w.lower() for w in _WORD.findall(token))
    return parsed


def apply_filters(qs: QuerySet, parsed: ParsedQuery, *, user=None) -> QuerySet:
    from apps.assets.models import AssetVersion

    for key, value in parsed.filters:
        if key == "kind":
            qs = qs.filter(kind=value.lower())
        elif key == "tag":
            qs = qs.filter(tags__name=value.lower())
        elif key == "arch":
            qs = qs.filter(metadata__architecture__iexact=value)
        elif key == "category":
            qs = qs.filter(category__iexact=value)
        elif key == "name":
            qs = qs.filter(name__icontains=value)
        elif key == "owner":
            if value == "me":
                qs = qs.filter(owner=user) if user is not None and user.is_authenticated else qs.none()
            else:
                qs = qs.filter(owner__username=value)
        elif key == "parent":
            parent_versions = AssetVersion.objects.filter(asset__name=value)
            if user is not None:  # a hidden parent matches nothing, as a missing one
                from audobon_site.access import visible_q

                parent_versions = parent_versions.filter(visible_q(user, "asset__"))
            qs = qs.filter(versions__parents__in=parent_versions)
        elif key in ("created", "updated"):
            op, day = _DATE_OP.match(value).groups()
            lookup = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "=": "date", None: "date"}[op]
            date = dt.date.fromisoformat(day)
            if lookup in ("gt", "lte"):
                # "after the day" means from the next midnight on.
                date = date + dt.timedelta(days=1)
                lookup = {"gt": "gte", "lte": "lt"}[lookup]
            field_name = f"{key}_at__date" if lookup == "date" else f"{key}_at__{lookup}"
            value_ = date if lookup == "date" else dt.datetime.combine(date, dt.time(), dt.UTC)
            qs = qs.filter(**{field_name: value_})
    if parsed.words:
        if connection.vendor == "sqlite":
            qs = qs.filter(search_key__in=_match_sql(parsed.words))
        else:
            qs = qs.filter(id__in=_match_sql(parsed.words))
    return qs.distinct() if any(k in ("tag", "parent") for k, _ in parsed.filters) else qs


def _match_sql(words: list[str]) -> RawSQL:
    if connection.vendor == "postgresql":
        query = " & ".join(f"{w}:*" for w in words)
        return RawSQL("SELECT asset_id FROM assets_search WHERE document @@ to_tsquery('simple', %s)",
                      [query])
    query = " ".join(f'"{w}"*' for w in words)
    return RawSQL("SELECT rowid FROM assets_search WHERE assets_search MATCH %s", [query])


def _document(asset) -> dict[str, str]:
    meta_values = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value[:50]:
                walk(v)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            meta_values.append(str(value))

    walk(asset.metadata)
    return {
        "name": asset.name,
        "description": asset.description,
        "tags": " ".join(t.name for t in asset.tags.all()),
        "meta": " ".join([asset.kind, asset.category, *meta_values])[:20_000],
    }


def index_update(asset) -> None:
    """Write the asset's search row (called by every service that changes an asset)."""
    doc = _document(asset)
    with connection.cursor() as cur:
        if connection.vendor == "sqlite":
            if asset.search_key is None:
                # Writes are serialised (IMMEDIATE transactions), so max + 1 cannot collide.
                cur.execute("SELECT coalesce(max(search_key), 0) + 1 FROM assets_asset")
                asset.search_key = cur.fetchone()[0]
                type(asset).objects.filter(pk=asset.pk).update(search_key=asset.search_key)
            cur.execute("DELETE FROM assets_search WHERE rowid = %s", [asset.search_key])
            cur.execute("INSERT INTO assets_search (rowid, asset_id, name, description, tags, meta) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
                        [asset.search_key, asset.pk.hex, doc["name"], doc["description"],
                         doc["tags"], doc["meta"]])
        elif connection.vendor == "postgresql":
            text = " ".join(doc.values())
            cur.execute("INSERT INTO assets_search (asset_id, document) "
                        "VALUES (%s, to_tsvector('simple', %s)) ON CONFLICT (asset_id) "
                        "DO UPDATE SET document = EXCLUDED.document", [str(asset.pk), text])


def index_remove(asset_ids) -> None:
    ids = [(a.hex if connection.vendor == "sqlite" else str(a)) for a in asset_ids]
    if not ids:
        return
    with connection.cursor() as cur:
        marks = ", ".join(["%s"] * len(ids))
        cur.execute(f"DELETE FROM assets_search WHERE asset_id IN ({marks})", ids)  # noqa: S608
