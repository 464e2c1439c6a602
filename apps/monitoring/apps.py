from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "apps.monitoring"
    label = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        # Job kinds register themselves where they are defined.
        from django.core.signals import got_request_exception

        from apps.monitoring import tasks  # noqa: F401

        got_request_exception.connect(_view_error, dispatch_uid="audobon-error-log")


def _view_error(sender, request=None, **kwargs):
    """A view raised: count it in the error log (Django answers 500 as before)."""
    import sys

    exc = sys.exc_info()[1]
    if exc is not None:
        from apps.monitoring.services import error_record

        error_record(exc=exc, where=f"view {request.path}"[:300] if request is not None else "view")
