from django import forms

from apps.assets.roots import PathNotAllowedError, web_path_check


class ScanForm(forms.Form):
    path = forms.CharField(max_length=1000, required=False, label="Folder to scan",
                           help_text="empty: every known folder and the Hugging Face cache; "
                                     "otherwise a folder under Audobon's home or an import root")

    def clean_path(self) -> str:
        """The resolved folder when the web may read it; the refusal names the allowed roots
        and says nothing of whether the path exists."""
        raw = self.cleaned_data["path"].strip()
        if not raw:
            return ""
        try:
            return str(web_path_check(raw))
        except PathNotAllowedError as exc:
            raise forms.ValidationError(str(exc)) from None
