"""Settings, all from the environment (see README, "Environment")."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF

from audobon_site.home import audobon_home, secret_key
from audobon_site.hosts import lan_allowed_hosts

BASE_DIR = Path(__file__).resolve().parent.parent
AUDOBON_HOME = audobon_home()


def _env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = secret_key(AUDOBON_HOME)
DEBUG = _env_bool("AUDOBON_DEBUG")
# The loopback names plus AUDOBON_ALLOWED_HOSTS; `audobon serve` adds the address it
# listens on (127.0.0.2, a LAN address) once audobon_site/hosts.py has accepted it.
ALLOWED_HOSTS = lan_allowed_hosts()

INSTALLED_APPS = [
    # not "daphne": `audobon serve` runs its server directly, and its app would make every
    # command import twisted's reactor (0.4 s) only to replace `runserver`
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "channels",
    "axes",
    "csp",
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
    # Lookups by name deep in services act for the request's user (audobon_site/access.py).
    "audobon_site.access.ActingUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
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
                "csp.context_processors.nonce",
                "apps.monitoring.context_processors.health_banners",
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
# Folders the web may read besides AUDOBON_HOME and the Hugging Face cache (scans, GGUF
# files, recipe paths), separated like PATH. The command line reads any path.
AUDOBON_IMPORT_ROOTS = [p for p in os.environ.get("AUDOBON_IMPORT_ROOTS", "").split(os.pathsep) if p.strip()]
# Bytes that validating an assembled model may use, one model at a time (default: what is free).
AUDOBON_VALIDATION_MEMORY = int(os.environ["AUDOBON_VALIDATION_MEMORY"]) \
    if os.environ.get("AUDOBON_VALIDATION_MEMORY", "").strip().isdigit() else None

# --- auth, i18n, static ------------------------------------------------------------
# django-axes first: it refuses a locked-out username + address before the password is
# even checked. The one-time login link logs in with ModelBackend directly.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
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

# --- login throttling (django-axes) -------------------------------------------------
# After AXES_FAILURE_LIMIT wrong passwords for one username from one address, that pair
# is refused (HTTP 429, templates/registration/locked_out.html) until the cool-off ends
# or an admin runs `audobon axes_reset_username NAME`. Counted in the database, so every
# web process of a LAN install sees the same count.
AXES_FAILURE_LIMIT = int(os.environ.get("AUDOBON_LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("AUDOBON_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# Behind the TLS proxy (AUDOBON_TLS) the peer is the proxy: count the address it forwards.
AXES_CLIENT_IP_CALLABLE = "audobon_site.login_throttle.client_ip"

# --- content security policy (django-csp) --------------------------------------------
# Only files served by Audobon run: no inline script, no inline style, no eval. htmx is
# told not to inject its indicator <style> (templates/base.html, its htmx-config meta;
# the indicator rules are in static/css/audobon.css). An inline <script> or <style>, if
# one is ever needed, takes nonce="{{ CSP_NONCE }}". 'self' covers the job websockets
# (ws:/wss: on the same host and port) in CSP level 3 browsers.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- TLS ----------------------------------------------------------------------------------
# AUDOBON_TLS=1: Audobon is reached over https, through a TLS proxy on the same machine
# that sets X-Forwarded-Proto (and drops a client's own). Cookies are then sent only
# over TLS, HSTS is on and plain http is redirected. Without it (the default, loopback
# or a LAN without TLS) none of this can apply, so the checks that ask for it are
# silenced rather than answered with settings that would break plain http.
AUDOBON_TLS = _env_bool("AUDOBON_TLS")
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # pages send the token from the form or hx-headers, never a cookie read
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if AUDOBON_TLS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    # `audobon up` probes its own server over plain http on loopback.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("AUDOBON_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SILENCED_SYSTEM_CHECKS = [
        # HSTS preload is a promise to browser vendors for public domains; a LAN host
        # name cannot be on that list.
        "security.W021",
    ]
else:
    SILENCED_SYSTEM_CHECKS = [
        "security.W004",  # HSTS: meaningless over plain http (browsers ignore it there)
        "security.W008",  # SECURE_SSL_REDIRECT: there is no https to redirect to
        "security.W012",  # SESSION_COOKIE_SECURE: a secure-only cookie would never come back
        "security.W016",  # CSRF_COOKIE_SECURE: the same
    ]

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
