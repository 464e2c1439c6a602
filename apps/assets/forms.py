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
    """A name only: the file goes to AUDOBON_HOME/backups/<name>, never where a browser says."""
    name = forms.CharField(max_length=104, label="Backup name",
                           help_text="a plain file name, written to the backups folder")

    def clean_name(self):
        from apps.assets.services import AssetInputError, backup_name_check

        try:
            return backup_name_check(self.cleaned_data["name"])
        except AssetInputError as exc:
            raise forms.ValidationError(str(exc)) from None
