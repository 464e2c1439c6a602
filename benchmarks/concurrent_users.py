"""Many people on one Audobon at once: latency, errors, and whether anyone sees another's work.

Starts `audobon up` on a fresh home (the embedded default, its workers included), makes N
accounts, each with a private asset whose name carries a marker of its own, and one asset
shared with everyone. Then N users, each logged in over HTTP on loopback as a different
account, browse, search, open assets and start self-test jobs for D seconds. It prints the
p50/p95/max latency, the error count (any answer other than the one expected, or no answer)
and the leak count (any answer to one user carrying another's private marker), and exits
non-zero if there was an error or a leak.

    python benchmarks/concurrent_users.py [--users 20] [--seconds 60] [--json]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.proc import Up, audobon, audobon_env

PASSWORD = "pw-load-test-1234"
SETUP = """
from pathlib import Path
from django.contrib.auth import get_user_model
from apps.assets import services
from audobon_site.access import Visibility
User = get_user_model()
src = Path({src!r})
for i in range({n}):
    u = User.objects.create_user(username=f"user{{i}}", password={pw!r})
    services.asset_import(source=src / f"u{{i}}", kind="other", name=f"private-u{{i}}-marker{{i:03d}}x",
                          owner=u)
first = User.objects.get(username="user0")
v = services.asset_import(source=src / "shared", kind="other", name="shared-notes", owner=first)
v.asset.visibility = Visibility.EVERYONE
v.asset.save(update_fields=["visibility"])
print("ready")
"""


class Client:
    """One logged-in browser: a cookie jar, no redirects followed, every request timed."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def csrf(self) -> str:
        return next((c.value for c in self.jar if c.name == "csrftoken"), "")

    def request(self, path: str, data: dict | None = None) -> tuple[int, bytes, float]:
        body = None
        headers = {}
        if data is not None:
            body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self.csrf()}).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded", "X-CSRFToken": self.csrf()}
        req = urllib.request.Request(self.base + path, data=body, headers=headers)
        start = time.perf_counter()
        try:
            with self.opener.open(req, timeout=30) as resp:
                content = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            content, status = exc.read(), exc.code
        return status, content, time.perf_counter() - start

    def login(self, username: str) -> None:
        self.request("/login/")
        status, _, _ = self.request("/login/", {"username": username, "password": PASSWORD})
        if status != 302:
            raise RuntimeError(f"login of {username} answered {status}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

    def http_error_302(self, req, fp, code, msg, headers):
        return fp


class Tally:
    def __init__(self, users: int):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.leaks: list[str] = []
        self.jobs = 0
        self.markers = [f"marker{i:03d}x" for i in range(users)]


def user_loop(i: int, base: str, users: int, until: float, tally: Tally) -> None:
    rng = random.Random(i)
    me = f"user{i}"
    mine = f"private-u{i}-marker{i:03d}x"
    other = f"private-u{(i + 1) % users}-marker{(i + 1) % users:03d}x"
    client = Client(base)
    try:
        client.login(me)
    except Exception as exc:
        with tally.lock:
            tally.errors.append(f"{me}: {exc}")
        return
    steps = [
        ("/", 200), ("/library/", 200), ("/library/?q=private", 200), ("/library/?q=kind:other", 200),
        (f"/library/a/{mine}/", 200), ("/library/a/shared-notes/", 200), (f"/library/a/{other}/", 404),
        (f"/library/a/{mine}/v/1/download/", 200), ("/jobs/", 200), ("/registry/", 200),
        ("/assembly/", 200), ("/training/", 200), ("/training/datasets/", 200),
    ]
    n = 0
    while time.monotonic() < until:
        n += 1
        if n % 6 == 0:
            path, data, want = "/jobs/selftest/", {"steps": "2", "step_seconds": "0", "queue": "light"}, 302
        else:
            (path, want), data = rng.choice(steps), None
        try:
            status, body, took = client.request(path, data)
        except Exception as exc:
            with tally.lock:
                tally.errors.append(f"{me} {path}: {type(exc).__name__}: {exc}")
            continue
        leaked = [m for j, m in enumerate(tally.markers) if j != i and m.encode() in body]
        with tally.lock:
            tally.latencies.append(took)
            if status != want:
                tally.errors.append(f"{me} {path}: {status} (expected {want})")
            if leaked:
                tally.leaks.append(f"{me} {path}: saw {leaked}")
            if data is not None and status == 302:
                tally.jobs += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="audobon-load-") as tmp:
        tmp = Path(tmp)
        home, src = tmp / "home", tmp / "src"
        for i in range(args.users):
            (src / f"u{i}").mkdir(parents=True)
            (src / f"u{i}" / "notes.txt").write_text(f"user {i}'s notes\n")
        (src / "shared").mkdir()
        (src / "shared" / "notes.txt").write_text("for everyone\n")
        up = Up(home, env=audobon_env(home)).start()
        try:
            done = audobon(up.env, "shell", "-c", SETUP.format(src=str(src), n=args.users, pw=PASSWORD),
                           timeout=300)
            if "ready" not in done.stdout:
                raise RuntimeError(f"setup failed:\n{done.stdout}\n{done.stderr}")
            tally = Tally(args.users)
            until = time.monotonic() + args.seconds
            threads = [threading.Thread(target=user_loop, args=(i, up.base, args.users, until, tally))
                       for i in range(args.users)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
        finally:
            up.stop()
    lat = sorted(tally.latencies)
    result = {
        "users": args.users, "seconds": round(wall, 1), "requests": len(lat),
        "requests_per_s": round(len(lat) / wall, 1) if wall else 0, "jobs_started": tally.jobs,
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1) if lat else None,
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "errors": len(tally.errors), "leaks": len(tally.leaks),
        "first_errors": tally.errors[:10], "first_leaks": tally.leaks[:10],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['users']} users for {result['seconds']} s: {result['requests']} requests "
              f"({result['requests_per_s']}/s), {result['jobs_started']} jobs started")
        print(f"latency p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms")
        print(f"errors {result['errors']}, leaks {result['leaks']}")
        for line in result["first_errors"] + result["first_leaks"]:
            print(f"  {line}")
    return 0 if lat and not tally.errors and not tally.leaks else 1


if __name__ == "__main__":
    raise SystemExit(main())
