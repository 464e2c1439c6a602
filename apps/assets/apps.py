from django.apps import AppConfig


class AssetsConfig(AppConfig):
    name = "apps.assets"
    label = "assets"
    verbose_name = "Library"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from apps.assets import tasks  # noqa: F401 - registers the library's job kinds

        post_save.connect(_first_admin_claims_ownerless, sender=get_user_model(),
                          dispatch_uid="audobon-first-admin-claims")


def _first_admin_claims_ownerless(sender, instance, **kwargs):
    """What commands made on a fresh home, before any account, belongs to the first admin."""
    if not instance.is_superuser:
        return
    if sender.objects.filter(is_superuser=True).exclude(pk=instance.pk).exists():
        return
    from audobon_site.access import claim_ownerless

    claim_ownerless(instance)
