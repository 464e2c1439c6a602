"""Which addresses `audobon up` and `audobon serve` may listen on, and the host names they
then accept.

Django-free on purpose: the rule is checked before anything is started or bound, and
the settings module uses `lan_allowed_hosts()` too.

- A loopback address (127.0.0.0/8, ::1, localhost) works on the embedded default.
- Any other address serves a network: that is LAN mode, which needs PostgreSQL
  (`AUDOBON_DATABASE_URL`) and Redis (`AUDOBON_REDIS_URL`). A specific address is
  accepted as a host name by itself; a wildcard (0.0.0.0, ::) cannot tell which names
  people will type, so `AUDOBON_ALLOWED_HOSTS` is required with it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql", "postgis")
WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - names to compare with, nothing is bound here


class HostRefused(Exception):
    """The address may not be served with this configuration; the message says why."""


@dataclass(frozen=True)
class BindPlan:
    host: str  # what to bind, as daphne takes it: an IP, no brackets around IPv6
    url_host: str  # the address in a URL and a Host header: IPv6 in brackets
    lan: bool
    allowed_hosts: list[str] = field(default_factory=list)

    @property
    def probe_host(self) -> str:
        """Where this machine reaches the server (a wildcard is reached on loopback)."""
        if self.host in WILDCARDS:
            return "127.0.0.1" if self.host == WILDCARDS[0] else "[::1]"
        return self.url_host

    @property
    def link_host(self) -> str:
        """The name to print in links: for a wildcard, the first plain allowed name."""
        if self.host not in WILDCARDS:
            return self.url_host
        names = [h for h in self.allowed_hosts if h not in LOOPBACK_HOSTS and not h.startswith((".", "*"))]
        return names[0] if names else self.probe_host


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def env_list(env: Mapping[str, str], name: str) -> list[str]:
    return [h.strip() for h in env.get(name, "").split(",") if h.strip()]


def is_postgres_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in POSTGRES_SCHEMES if "://" in url else False


def lan_allowed_hosts(env: Mapping[str, str] | None = None) -> list[str]:
    """Host names accepted on every start: the loopback names plus AUDOBON_ALLOWED_HOSTS."""
    env = os.environ if env is None else env
    return [*LOOPBACK_HOSTS, *env_list(env, "AUDOBON_ALLOWED_HOSTS")]


def bind_plan(host: str, env: Mapping[str, str] | None = None) -> BindPlan:
    """Check HOST against the rule; raise HostRefused with the reason, or say what to
    listen on and which Host headers to accept."""
    env = os.environ if env is None else env
    raw = host.strip()
    if raw.lower() == "localhost":
        return BindPlan(host="127.0.0.1", url_host="localhost", lan=False,
                        allowed_hosts=list(LOOPBACK_HOSTS))
    addr = _address(raw)
    if addr is None:
        raise HostRefused(f"--host {host}: give an IP address (or localhost), e.g. 127.0.0.1, "
                          f"or 0.0.0.0 for every address in LAN mode")
    bind = str(addr)
    url_host = f"[{bind}]" if addr.version == 6 else bind
    if addr.is_loopback:
        return BindPlan(host=bind, url_host=url_host, lan=False,
                        allowed_hosts=_dedupe([*LOOPBACK_HOSTS, url_host]))

    missing = []
    db_url = env.get("AUDOBON_DATABASE_URL", "").strip()
    if not db_url:
        missing.append("AUDOBON_DATABASE_URL (a PostgreSQL URL)")
    elif not is_postgres_url(db_url):
        missing.append("AUDOBON_DATABASE_URL to be PostgreSQL, not "
                       f"{db_url.split('://', 1)[0] or 'that URL'}")
    if not env.get("AUDOBON_REDIS_URL", "").strip():
        missing.append("AUDOBON_REDIS_URL")
    extra = env_list(env, "AUDOBON_ALLOWED_HOSTS")
    if addr.is_unspecified and not extra:
        missing.append("AUDOBON_ALLOWED_HOSTS (the names or addresses people will type, "
                       "e.g. gpu-box.lan,192.168.1.20)")
    if missing:
        raise HostRefused(
            f"--host {host} is not a loopback address: serving a network is LAN mode, which "
            f"needs {'; '.join(missing)}. On this machine alone, use 127.0.0.1 or localhost.")
    # A wildcard accepts only the names listed; a specific address is also a name itself.
    own = [] if addr.is_unspecified else [url_host]
    return BindPlan(host=bind, url_host=url_host, lan=True,
                    allowed_hosts=_dedupe([*LOOPBACK_HOSTS, *own, *extra]))


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
