from django.db import models


class ScanRoot(models.Model):
    """A folder (or Hugging Face hub cache) that scans look in."""

    path = models.CharField(max_length=1000, unique=True)
    last_scan_at = models.DateTimeField(null=True, blank=True)
    models_found = models.PositiveIntegerField(default=0)

    def __str__(self):
        return self.path


class DiscoveredModel(models.Model):
    """A model found on disk, inspected from its headers, registered as an asset version
    referenced in place (or imported into the store on request)."""

    path = models.CharField(max_length=1000, unique=True)
    name = models.CharField(max_length=300)
    source = models.CharField(max_length=16)  # folder | hf-cache | demo
    root = models.ForeignKey(ScanRoot, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="models")
    fingerprint = models.CharField(max_length=64)
    format = models.CharField(max_length=32, blank=True)
    architecture = models.CharField(max_length=100, blank=True, db_index=True)
    parameters = models.BigIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    license = models.CharField(max_length=100, blank=True)
    report = models.JSONField(default=dict, blank=True)  # the inspect JSON (audobon.inspect/1)
    error = models.TextField(blank=True)
    asset = models.ForeignKey("assets.Asset", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="discovered")
    missing = models.BooleanField(default=False)
    seen_at = models.DateTimeField(auto_now_add=True)
    inspected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name
