from django.conf import settings
from django.db import models

from audobon_site.access import visibility_fields


class Recipe(models.Model):
    """A saved recipe (mergekit YAML plus Audobon's additions). Runs are jobs; their results
    are asset versions whose spec holds the exact recipe text."""

    name = models.CharField(max_length=200, unique=True)
    text = models.TextField()
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="recipes")
    visibility, group = visibility_fields()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self):
        return self.name
