"""Forms shared by the apps' pages."""

from __future__ import annotations

from django import forms
from django.contrib.auth.models import Group

from audobon_site.access import Visibility, is_admin


class VisibilityForm(forms.Form):
    """Who sees a thing: only its owner, a group, or everyone. A group must be one of the
    user's own (an admin may pick any)."""

    visibility = forms.ChoiceField(choices=Visibility.choices)
    group = forms.ModelChoiceField(queryset=Group.objects.none(), required=False,
                                   empty_label="(no group)")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        groups = Group.objects.all() if is_admin(user) else user.groups.all()
        self.fields["group"].queryset = groups.order_by("name")

    @classmethod
    def for_object(cls, obj, user):
        """The form filled with `obj`'s current setting, or None when `user` may not change it."""
        from audobon_site.access import can_change

        if not can_change(user, obj):
            return None
        return cls(user=user, initial={"visibility": obj.visibility, "group": obj.group_id})

    def clean(self):
        data = super().clean()
        if data.get("visibility") == Visibility.GROUP and not data.get("group"):
            self.add_error("group", "choose the group that may see it")
        return data

    def error_text(self) -> str:
        return "; ".join(f"{name}: {' '.join(errs)}" for name, errs in self.errors.items())


def share_from_post(request, obj, label: str) -> None:
    """The share form of a page, posted: `obj` (which the caller checked `request.user` may
    change) gets the visibility asked for, and the page's message says so, or why not."""
    from django.contrib import messages

    from audobon_site.access import visibility_set

    form = VisibilityForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(request, form.error_text())
        return
    visibility_set(obj=obj, user=request.user, visibility=form.cleaned_data["visibility"],
                   group=form.cleaned_data["group"])
    group = f" ({obj.group.name})" if obj.group else ""
    messages.success(request, f"{label} is now visible to {obj.get_visibility_display()}{group}.")
