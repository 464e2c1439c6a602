from django.apps import AppConfig


class AssemblyConfig(AppConfig):
    name = "apps.assembly"
    label = "assembly"
    verbose_name = "Assembly"
