from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "apps.monitoring"
    label = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        # Job kinds register themselves where they are defined.
        from apps.monitoring import tasks  # noqa: F401
