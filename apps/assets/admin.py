from django.contrib import admin

from apps.assets.models import Asset, AssetVersion, Backup, RecoveryPoint, Tag, Upload


class AssetVersionInline(admin.TabularInline):
    model = AssetVersion
    fk_name = "asset"
    extra = 0
    fields = ("number", "size_bytes", "message", "job", "created_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "head_number", "size_bytes", "owner", "updated_at", "trashed_at")
    list_filter = ("kind", "tags")
    search_fields = ("name", "description")
    readonly_fields = ("head_number", "size_bytes", "metadata", "search_key")
    inlines = [AssetVersionInline]


@admin.register(AssetVersion)
class AssetVersionAdmin(admin.ModelAdmin):
    # Versions are immutable: the admin shows them, it does not edit them.
    list_display = ("__str__", "size_bytes", "created_by", "job", "created_at")
    readonly_fields = ("asset", "number", "manifest", "metadata", "parents", "created_by", "job",
                       "spec", "message", "size_bytes")

    def has_add_permission(self, request):
        return False


admin.site.register(Tag)
admin.site.register(RecoveryPoint)
admin.site.register(Backup)
admin.site.register(Upload)
