"""ASGI entry: HTTP (with static files) and the job websockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audobon_site.settings")

from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from apps.monitoring.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    # Static files come from the app's own folders through Django's finders:
    # a local app has no separate web server and needs no collectstatic step.
    "http": ASGIStaticFilesHandler(django_asgi),
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    ),
})
