from django import forms

from apps.monitoring.jobkinds import JOB_KINDS
from apps.monitoring.models import Job


class SelftestForm(forms.Form):
    steps = forms.IntegerField(min_value=1, max_value=100_000, initial=20)
    step_seconds = forms.FloatField(min_value=0, max_value=3600, initial=0.5)
    queue = forms.ChoiceField(choices=[("light", "light"), ("heavy", "heavy")], initial="light")


class JobFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *Job.Status.choices])
    kind = forms.ChoiceField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [("", "any kind"), *((k, k) for k in sorted(JOB_KINDS))]
