from django.apps import apps
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied

from apps.monitoring.foreground import ForegroundCommand
from audobon_site.access import Visibility, visibility_set

# What can be shared, and how the command names one of each.
KINDS = {"asset": ("assets.Asset", "name"), "recipe": ("assembly.Recipe", "name"),
         "job": ("monitoring.Job", "pk"), "run": ("training.TrainingRun", "pk")}


class Command(ForegroundCommand):
    help = ("Say who sees an asset, recipe, job or run: only its owner (private), a group, or "
            "everyone. Only its owner or an admin may.")
    creates = True  # acts for --owner (default: the only admin)

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=sorted(KINDS))
        parser.add_argument("ref", help="the asset's or recipe's name, the job's or run's number")
        parser.add_argument("visibility", choices=Visibility.values)
        parser.add_argument("--group", help="the group that sees it (with 'group')")

    def handle(self, *args, kind, ref, visibility, group, **opts):
        label, key = KINDS[kind]
        model = apps.get_model(label)
        if key == "pk" and not ref.isdigit():
            raise ValueError(f"a {kind} is named by its number, not {ref!r}")
        obj = model.objects.filter(**{key: int(ref) if key == "pk" else ref}).first()
        from audobon_site.access import can_see

        if obj is None or (self.owner is not None and not can_see(self.owner, obj)):
            raise LookupError(f"there is no {kind} {ref!r}")
        grp = None
        if group:
            grp = Group.objects.filter(name=group).first()
            if grp is None:
                raise LookupError(f"there is no group {group!r}")
        if self.owner is None:
            # The local command line on a home with no account: nobody to check against.
            obj.visibility, obj.group = visibility, grp if visibility == Visibility.GROUP else None
            obj.save(update_fields=["visibility", "group"])
        else:
            try:
                visibility_set(obj=obj, user=self.owner, visibility=visibility, group=grp)
            except PermissionDenied as exc:
                raise ValueError(str(exc)) from None
        self.emit({"kind": kind, "ref": ref, "visibility": obj.visibility,
                   "group": obj.group.name if obj.group else None},
                  f"{kind} {ref} is visible to {obj.get_visibility_display()}"
                  + (f" ({obj.group.name})" if obj.group else ""))
