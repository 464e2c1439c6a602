"""Who may see and change what: owners, visibility, admins.

Every asset, recipe, job and training run has an owner and a visibility:

- ``private``: its owner (and admins) only;
- ``group``: also the members of its group;
- ``everyone``: every logged-in user.

Admins (staff accounts; `audobon up` makes the first one) see and change everything.
Seeing is not changing: only the owner (or an admin) edits, trashes, restores or deletes
a thing; the others may read what is shared with them and build on it (a shared model in
their own recipe).

Selectors call ``visible_q`` with the requesting user, so a view never looks up by name
or id something the user may not see; the answer for something hidden is the same 404 as
for something that does not exist.

Things made before any account existed (a command on a fresh home) have no owner: only
admins see them, and the first superuser made takes them over (``claim_ownerless``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Q

# Whom the code running now acts for: the request's user in a view (ActingUserMiddleware),
# the job's owner in a worker (execute_job), None on the local command line (everything).
# Selectors that look things up by a name a user gave fall back to it, so a lookup deep in
# a service (a recipe's model, a run's dataset) is filtered like the page that started it.
_acting: ContextVar = ContextVar("audobon_acting_user", default=None)
UNSET = object()


def acting_user():
    return _acting.get()


def resolve_user(user):
    """`user` itself, or whom the running code acts for when it was not given."""
    return _acting.get() if user is UNSET else user


@contextmanager
def acting_as(user):
    token = _acting.set(user)
    try:
        yield
    finally:
        _acting.reset(token)


class ActingUserMiddleware:
    """Every request acts for its user (after AuthenticationMiddleware)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        with acting_as(user if getattr(user, "is_authenticated", False) else _Nobody()):
            return self.get_response(request)


class _Nobody:
    """An anonymous request: sees nothing (distinct from None, the local command line)."""

    is_authenticated = False
    is_staff = is_superuser = False
    pk = None


class Visibility(models.TextChoices):
    PRIVATE = "private", "only me"
    GROUP = "group", "my group"
    EVERYONE = "everyone", "everyone"


def default_visibility() -> str:
    """What new things get: ``AUDOBON_DEFAULT_VISIBILITY`` (set by whoever runs the server),
    else private."""
    value = os.environ.get("AUDOBON_DEFAULT_VISIBILITY", "").strip().lower() or Visibility.PRIVATE
    if value not in Visibility.values:
        raise ValueError(f"AUDOBON_DEFAULT_VISIBILITY={value!r}: use one of {', '.join(Visibility.values)}")
    return value


def visibility_fields() -> tuple[models.CharField, models.ForeignKey]:
    """The two fields every owned model carries (call once per model)."""
    return (
        models.CharField(max_length=16, choices=Visibility.choices, default=default_visibility,
                         db_index=True),
        models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.SET_NULL,
                          related_name="+", help_text="who sees it when the visibility is 'group'"),
    )


def is_admin(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and (user.is_staff or user.is_superuser))


def require_admin(user, what: str = "this") -> None:
    if not is_admin(user):
        raise PermissionDenied(f"{what} is for admins only")


def admin_required(view):
    """A view decorator: logged-in admins only (403 for the others)."""
    from functools import wraps

    from django.contrib.auth.decorators import login_required

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        require_admin(request.user)
        return view(request, *args, **kwargs)

    return login_required(wrapped)


def visible_q(user, prefix: str = "") -> Q:
    """The rows `user` may see, as a filter on a model with owner/visibility/group fields
    (`prefix` reaches them through a relation, e.g. ``"asset__"``)."""
    if not getattr(user, "is_authenticated", False):
        return Q(pk__in=[])
    if is_admin(user):
        return Q()
    p = prefix
    return (Q(**{f"{p}owner": user}) | Q(**{f"{p}visibility": Visibility.EVERYONE})
            | Q(**{f"{p}visibility": Visibility.GROUP, f"{p}group__in": user.groups.all()}))


def can_see(user, obj) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    if is_admin(user) or (obj.owner_id is not None and obj.owner_id == user.pk):
        return True
    if obj.visibility == Visibility.EVERYONE:
        return True
    return (obj.visibility == Visibility.GROUP and obj.group_id is not None
            and user.groups.filter(pk=obj.group_id).exists())


def can_change(user, obj) -> bool:
    """Edit, trash, restore, delete, change who sees it: the owner and admins."""
    if not getattr(user, "is_authenticated", False):
        return False
    return is_admin(user) or (obj.owner_id is not None and obj.owner_id == user.pk)


def require_change(user, obj, what: str) -> None:
    if not can_change(user, obj):
        raise PermissionDenied(f"{what} belongs to someone else: only its owner or an admin may change it")


def visibility_set(*, obj, user, visibility: str, group=None) -> None:
    """Change who sees `obj` (its owner or an admin). A group must be one the owner is in,
    unless an admin sets it."""
    require_change(user, obj, str(obj))
    if visibility not in Visibility.values:
        raise ValueError(f"visibility {visibility!r}: use one of {', '.join(Visibility.values)}")
    if visibility == Visibility.GROUP:
        if group is None:
            raise ValueError("visibility 'group' needs a group")
        if not is_admin(user) and not user.groups.filter(pk=group.pk).exists():
            raise ValueError(f"you are not in group {group.name!r}")
    else:
        group = None
    obj.visibility, obj.group = visibility, group
    obj.save(update_fields=["visibility", "group"])


# --- who a command acts as ------------------------------------------------------------------

class OwnerError(Exception):
    """A command cannot tell whom to act as."""


def command_owner(username: str | None):
    """The user a command that creates things acts as: `--owner USERNAME`; without it the
    only superuser; on a home with no superuser yet, no one (the first superuser made then
    owns what was made). Several superusers and no `--owner`: refused."""
    from django.contrib.auth import get_user_model

    users = get_user_model()
    if username:
        user = users.objects.filter(username=username).first()
        if user is None:
            raise OwnerError(f"--owner {username}: there is no user {username!r}")
        if not user.is_active:
            raise OwnerError(f"--owner {username}: that account is disabled")
        return user
    admins = list(users.objects.filter(is_superuser=True, is_active=True).order_by("pk")[:2])
    if not admins:
        return None
    if len(admins) > 1:
        raise OwnerError("there are several admins: say whom this is for with --owner USERNAME")
    return admins[0]


def add_owner_argument(parser) -> None:
    parser.add_argument("--owner", metavar="USERNAME", default=None,
                        help="the user who will own what this makes (default: the only admin)")


def owner_from_options(options):
    """`command_owner` for a management command's options, as a CommandError."""
    from django.core.management.base import CommandError

    try:
        return command_owner(options.get("owner"))
    except OwnerError as exc:
        raise CommandError(str(exc)) from None


def owned_models() -> list[type[models.Model]]:
    from django.apps import apps

    return [apps.get_model(label) for label in OWNED_MODELS]


# Every model with owner/visibility/group, by app label.
OWNED_MODELS = ("assets.Asset", "assembly.Recipe", "monitoring.Job", "training.TrainingRun")


def claim_ownerless(user) -> int:
    """Give `user` everything nobody owns (made by commands before any account existed).
    Returns how many rows it took over."""
    n = 0
    for model in owned_models():
        n += model.objects.filter(owner__isnull=True).update(owner=user)
    return n


def claim_ownerless_in_migration(label: str):
    """A RunPython step: the only superuser, if there is exactly one, takes over the rows of
    `label` ("app.Model") that nobody owns (what an upgraded single-user home holds)."""

    def forward(apps, schema_editor):
        model = apps.get_model(label)
        user_model = apps.get_model("auth", "User")
        admins = list(user_model.objects.filter(is_superuser=True).values_list("pk", flat=True)[:2])
        if len(admins) == 1:
            model.objects.filter(owner__isnull=True).update(owner_id=admins[0])

    return forward
