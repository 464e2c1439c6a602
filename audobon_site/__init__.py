"""Audobon's Django project: settings, urls, asgi, queues and the `audobon` command."""
