from django.apps import AppConfig


class AssemblyConfig(AppConfig):
    name = "apps.assembly"
    label = "assembly"
    verbose_name = "Assembly"

    def ready(self):
        from apps.assembly import tasks  # noqa: F401 - registers the assembly job kinds
