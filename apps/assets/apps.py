from django.apps import AppConfig


class AssetsConfig(AppConfig):
    name = "apps.assets"
    label = "assets"
    verbose_name = "Library"

    def ready(self):
        from apps.assets import tasks  # noqa: F401 - registers the library's job kinds
