"""Settings for pytest: a temporary AUDOBON_HOME per test session, tasks run inline."""

import atexit
import os
import shutil
import tempfile

if "AUDOBON_HOME" not in os.environ or not os.environ.get("AUDOBON_TEST_KEEP_HOME"):
    _home = tempfile.mkdtemp(prefix="audobon-test-")
    os.environ["AUDOBON_HOME"] = _home
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
os.environ["AUDOBON_QUEUE_IMMEDIATE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from audobon_site.settings import *  # noqa: F403

ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
