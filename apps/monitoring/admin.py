from django.contrib import admin

from apps.monitoring.models import ErrorGroup, Job, JobEvent, QueueState, ResourceSample, WorkerHeartbeat


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    readonly_fields = ("kind", "data", "created_at")
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "progress", "owner", "queue", "priority",
                    "created_at", "finished_at")
    list_filter = ("status", "kind", "queue")
    search_fields = ("kind", "error", "worker_id")
    readonly_fields = ("created_at", "started_at", "finished_at", "heartbeat_at")
    inlines = [JobEventInline]


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ("id", "job", "kind", "created_at")
    list_filter = ("kind",)
    raw_id_fields = ("job",)


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("worker_id", "queue", "device", "host", "pid", "started_at", "last_seen")


@admin.register(ResourceSample)
class ResourceSampleAdmin(admin.ModelAdmin):
    list_display = ("created_at", "cpu_percent", "ram_used", "disk_free")


@admin.register(ErrorGroup)
class ErrorGroupAdmin(admin.ModelAdmin):
    list_display = ("exc_type", "count", "first_seen", "last_seen", "where", "title")
    search_fields = ("exc_type", "title", "message")
    readonly_fields = ("signature", "title", "exc_type", "message", "traceback", "where", "count",
                       "first_seen", "last_seen", "jobs")


@admin.register(QueueState)
class QueueStateAdmin(admin.ModelAdmin):
    list_display = ("name", "paused", "changed_by", "changed_at")
    readonly_fields = ("changed_by", "changed_at")
