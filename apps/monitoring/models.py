from django.conf import settings
from django.db import models
from django.utils import timezone

from audobon_site.access import visibility_fields


class Job(models.Model):
    """One long operation. Its results point back at it; the spine knows nothing of them."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)

    kind = models.CharField(max_length=64, db_index=True)
    spec = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="jobs",
    )
    visibility, group = visibility_fields()
    priority = models.IntegerField(default=0)
    queue = models.CharField(max_length=16)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    progress = models.FloatField(default=0.0)
    steps_done = models.BigIntegerField(default=0)
    steps_total = models.BigIntegerField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    worker_id = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # What the run used: the peak resident memory of the process tree that ran it, and the
    # peak GPU memory torch allocated (null without CUDA).
    peak_rss = models.BigIntegerField(null=True, blank=True)
    peak_gpu_memory = models.BigIntegerField(null=True, blank=True)
    # What the kind declared it needs ({"memory", "disk", "device"}), and while it waits for
    # room beside the running jobs, why.
    needs = models.JSONField(null=True, blank=True)
    waiting_for = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self):
        return f"job {self.pk} {self.kind} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class JobEvent(models.Model):
    """Everything a job reported, in order, so a page opened late shows the whole history."""

    class Kind(models.TextChoices):
        PROGRESS = "progress"
        METRIC = "metric"
        LOG = "log"
        STATE = "state"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"])]

    def __str__(self):
        return f"{self.job_id}#{self.pk} {self.kind}"


class WorkerHeartbeat(models.Model):
    """One row per running queue consumer; /healthz and crash recovery read it."""

    worker_id = models.CharField(max_length=200, primary_key=True)
    queue = models.CharField(max_length=16)
    host = models.CharField(max_length=200)
    pid = models.IntegerField()
    # The GPU a heavy worker runs its jobs on ("cuda:N", the machine's own numbering), or ""
    # (cpu, or a worker that sees every device): where a heavy job can be placed.
    device = models.CharField(max_length=32, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self):
        return self.worker_id


class ResourceSample(models.Model):
    """CPU, RAM, disk and GPU, every few seconds, from the sampler process. Raw samples
    older than an hour are folded into one row a minute (`resolution` 60: the minute's
    means), and rows older than a week are deleted."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    resolution = models.PositiveIntegerField(default=0)  # 0: one reading; N: the mean of N seconds
    cpu_percent = models.FloatField()
    ram_used = models.BigIntegerField()
    ram_total = models.BigIntegerField()
    disk_free = models.BigIntegerField()
    disk_total = models.BigIntegerField()
    gpus = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"sample {self.created_at:%H:%M:%S}"


class ErrorGroup(models.Model):
    """Exceptions from jobs and views with the same signature (type and the functions they
    passed through): how often, first and last seen, the last message and traceback, and
    the jobs that failed with it."""

    signature = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=1000)  # the readable signature
    exc_type = models.CharField(max_length=200)
    message = models.TextField(blank=True)  # the last one
    traceback = models.TextField(blank=True)  # the last one
    where = models.CharField(max_length=300, blank=True)  # the last job kind or request path
    count = models.PositiveIntegerField(default=0)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    jobs = models.ManyToManyField(Job, blank=True, related_name="error_groups")

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self):
        return f"{self.exc_type} x{self.count}"


class QueueState(models.Model):
    """Whether a queue is paused. In the database, so a pause survives restarts and holds for
    every worker of that queue, on this machine or another one sharing the database."""

    name = models.CharField(max_length=16, primary_key=True)
    paused = models.BooleanField(default=False)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"queue {self.name} ({'paused' if self.paused else 'running'})"
