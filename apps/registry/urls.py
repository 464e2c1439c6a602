from django.urls import path

from apps.monitoring.views import area_jobs

app_name = "registry"
urlpatterns = [
    path("", area_jobs, {
        "area": "registry", "title": "Registry",
        "about": "Models found on disk and in the Hugging Face cache, inspected header-only.",
    }, name="index"),
]
