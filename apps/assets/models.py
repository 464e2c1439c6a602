import uuid

from django.conf import settings
from django.db import models

from audobon_site.access import visibility_fields


class Tag(models.Model):
    name = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Asset(models.Model):
    """One thing in the library; its content lives in its immutable versions.

    UUID keys keep identities stable across backup and restore into another library.
    """

    class Kind(models.TextChoices):
        MODEL = "model"
        ADAPTER = "adapter"
        COMPONENT = "component"
        DATASET = "dataset"
        IMAGE = "image"
        REPORT = "report"
        OTHER = "other"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices, db_index=True)
    name = models.CharField(max_length=200, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.SET_NULL, related_name="assets")
    visibility, group = visibility_fields()
    category = models.CharField(max_length=100, blank=True, db_index=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="assets")
    description = models.TextField(blank=True)
    # The head version's metadata, copied here so filters like arch:llama are one query.
    metadata = models.JSONField(default=dict, blank=True)
    head_number = models.PositiveIntegerField(default=0)
    # The row number of its entry in the SQLite full-text index: matching by rowid never
    # reads the index's stored text, which keeps search fast on large result sets.
    search_key = models.BigIntegerField(null=True, blank=True, unique=True, editable=False)
    size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    trashed_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["trashed_at", "-updated_at"], name="asset_live_recent")]

    def __str__(self):
        return self.name


class AssetVersion(models.Model):
    """Immutable: a manifest of files (path -> sha256, size), metadata, and lineage."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    manifest = models.JSONField(default=dict)
    metadata = models.JSONField(default=dict, blank=True)
    parents = models.ManyToManyField("self", symmetrical=False, blank=True,
                                     related_name="children")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    job = models.ForeignKey("monitoring.Job", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="asset_versions")
    spec = models.JSONField(default=dict, blank=True)
    message = models.CharField(max_length=500, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    # Set for a model referenced in place (the registry's "don't copy it"): the files stay
    # in this folder, and manifest hashes are known only where the source names them.
    location = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["asset", "-number"]
        constraints = [models.UniqueConstraint(fields=["asset", "number"],
                                               name="assetversion_unique_number")]

    def __str__(self):
        return f"{self.asset.name}@{self.number}"


class RecoveryPoint(models.Model):
    """A named snapshot of every asset's head version ({asset id: version id})."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    heads = models.JSONField(default=dict)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name


class Backup(models.Model):
    """A backup file written (or restored from), with what it held."""

    class Direction(models.TextChoices):
        BACKUP = "backup"
        RESTORE = "restore"

    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.BACKUP)
    path = models.CharField(max_length=1000)
    blobs = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    assets = models.PositiveIntegerField(default=0)
    verified = models.BooleanField(default=False)
    job = models.ForeignKey("monitoring.Job", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.direction} {self.path}"


class Upload(models.Model):
    """A browser upload in progress: files are staged under work/uploads/<id>/ chunk by
    chunk, so a cut-off upload resumes where it stopped; nothing is registered until
    every file is complete."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="+")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Asset.Kind.choices)
    files = models.JSONField(default=list)  # [{"path": ..., "size": ...}]
    job = models.ForeignKey("monitoring.Job", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"upload {self.name}"
