"""The address django-axes counts a login attempt against."""

from __future__ import annotations

from django.conf import settings


def client_ip(request) -> str | None:
    """The peer's address; with AUDOBON_TLS every request comes through the TLS proxy in
    front, which appends the real peer to X-Forwarded-For, so its last entry is the client
    (entries before it are whatever the client sent, and are not trusted)."""
    if settings.AUDOBON_TLS:
        forwarded = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
                     if h.strip()]
        if forwarded:
            return forwarded[-1]
    return request.META.get("REMOTE_ADDR")
