"""Shared by the benchmarks: a real `audobon up`, a logged-in session, Django in-process."""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.proc import Up, audobon_env, lan_backend  # noqa: E402


@contextlib.contextmanager
def running_audobon(redis: bool = False):
    """`audobon up` on a fresh home (or PostgreSQL + Redis), with this process's Django
    pointed at the same database so it can read event timestamps."""
    backend = lan_backend() if redis else contextlib.nullcontext({})
    with tempfile.TemporaryDirectory(prefix="audobon-bench-") as tmp, backend as extra:
        home = Path(tmp) / "home"
        env = audobon_env(home, **extra)
        up = Up(home, env=env).start()
        try:
            for key in ("AUDOBON_HOME", "AUDOBON_DATABASE_URL", "AUDOBON_REDIS_URL"):
                if key in env:
                    os.environ[key] = env[key]
                else:
                    os.environ.pop(key, None)
            os.environ["DJANGO_SETTINGS_MODULE"] = "audobon_site.settings"
            import django

            django.setup()
            yield up
        finally:
            up.stop()


def session_cookie(up: Up) -> str:
    """Log in through the one-time link; return the Cookie header for the websocket."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(up.login_link).read()
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]
