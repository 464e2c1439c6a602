from django import forms


class ScanForm(forms.Form):
    path = forms.CharField(max_length=1000, required=False, label="Folder to scan",
                           help_text="empty: every known folder and the Hugging Face cache")
