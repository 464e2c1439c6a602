from django import forms

from apps.assets.models import Asset


class AssetEditForm(forms.Form):
    tags = forms.CharField(required=False, help_text="comma-separated")
    category = forms.CharField(required=False, max_length=100)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))


class UploadStartForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(choices=Asset.Kind.choices)


class RecoveryPointForm(forms.Form):
    name = forms.CharField(max_length=200)


class BackupForm(forms.Form):
    dest = forms.CharField(max_length=1000, label="Backup file (on the server)")
