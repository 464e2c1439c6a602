from django.contrib import admin

from apps.registry.models import DiscoveredModel, ScanRoot


@admin.register(DiscoveredModel)
class DiscoveredModelAdmin(admin.ModelAdmin):
    list_display = ("name", "architecture", "parameters", "format", "source", "missing", "error")
    list_filter = ("architecture", "source", "missing")
    search_fields = ("name", "path")
    readonly_fields = ("report",)


admin.site.register(ScanRoot)
