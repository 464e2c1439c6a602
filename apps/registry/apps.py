from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "apps.registry"
    label = "registry"
    verbose_name = "Registry"

    def ready(self):
        from apps.registry import tasks  # noqa: F401 - registers the registry's job kinds
