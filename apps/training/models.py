from django.conf import settings
from django.db import models

from audobon_site.access import visibility_fields


class TrainingRun(models.Model):
    """One fine-tuning run: its spec, inputs and results. A run is carried out by one job, or
    by several when it is stopped (or its worker dies) and resumed from a checkpoint; its
    checkpoints live in AUDOBON_HOME/runs/<id>/."""

    name = models.CharField(max_length=200, help_text="the asset the result becomes a version of")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.SET_NULL, related_name="training_runs")
    visibility, group = visibility_fields()
    spec = models.JSONField(default=dict)
    base = models.ForeignKey("assets.AssetVersion", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    dataset = models.ForeignKey("assets.AssetVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    jobs = models.ManyToManyField("monitoring.Job", blank=True, related_name="training_runs")
    result = models.ForeignKey("assets.AssetVersion", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+", help_text="the adapter (or the model of a full fine-tune)")
    merged = models.ForeignKey("assets.AssetVersion", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"run {self.pk} {self.name}"
