"""Template filters for numbers and facts as people read them."""

from django import template

register = template.Library()


@register.filter
def human_count(value) -> str:
    """22713728 → '22.7 M'."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        return "—"
    for unit in ("", " K", " M", " B", " T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g} P"


@register.filter
def pretty(value) -> str:
    """A fact for reading: dicts as 'key: value · …', lists comma-joined, None as '—'."""
    if value is None or value == [] or value == {}:
        return "—"
    if isinstance(value, dict):
        return " · ".join(f"{k}: {pretty(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(pretty(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
