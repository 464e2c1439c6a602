"""Settings, all from the environment (see README, "Environment")."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from audobon_site.home import audobon_home, secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
AUDOBON_HOME = audobon_home()


def _env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = secret_key(AUDOBON_HOME)
DEBUG = _env_bool("AUDOBON_DEBUG")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", *[
    h.strip() for h in os.environ.get("AUDOBON_ALLOWED_HOSTS", "").split(",") if h.strip()
]]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "channels",
    "apps.monitoring",
    "apps.assets",
    "apps.registry",
    "apps.assembly",
    "apps.training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "audobon_site.urls"
ASGI_APPLICATION = "audobon_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -----------------------------------------------------------------
DATABASE_URL = os.environ.get("AUDOBON_DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": AUDOBON_HOME / "db.sqlite3",
            "OPTIONS": {
                # WAL lets the web process read while a worker writes; IMMEDIATE
                # transactions plus a busy timeout turn lock contention into a wait
                # instead of "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- queue and channel layer -----------------------------------------------------
REDIS_URL = os.environ.get("AUDOBON_REDIS_URL", "")
# Tests run tasks inline; `audobon up` runs them in the heavy and light consumers.
AUDOBON_QUEUE_IMMEDIATE = _env_bool("AUDOBON_QUEUE_IMMEDIATE")
AUDOBON_QUEUE_FILE = AUDOBON_HOME / "queue.db"
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    # Workers are other processes, so an in-memory layer cannot reach the browser:
    # the job consumer tails the JobEvent table instead (apps/monitoring/consumers.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# A worker whose heartbeat is older than this is taken for dead.
AUDOBON_HEARTBEAT_SECONDS = float(os.environ.get("AUDOBON_HEARTBEAT_SECONDS", "2"))
AUDOBON_WORKER_STALE_SECONDS = float(os.environ.get("AUDOBON_WORKER_STALE_SECONDS", "20"))
AUDOBON_SAMPLE_SECONDS = float(os.environ.get("AUDOBON_SAMPLE_SECONDS", "5"))

# --- auth, i18n, static ------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "monitoring:dashboard"
LOGOUT_REDIRECT_URL = "login"
# One-time login links printed by `audobon up` stay valid this long.
AUDOBON_LOGIN_LINK_SECONDS = int(os.environ.get("AUDOBON_LOGIN_LINK_SECONDS", str(24 * 3600)))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("AUDOBON_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "huey": {"level": "WARNING"},
    },
}
