from django.urls import path

from apps.monitoring.views import area_jobs

app_name = "assets"
urlpatterns = [
    path("", area_jobs, {
        "area": "assets", "title": "Library",
        "about": "Models, adapters, components, datasets, images and reports, versioned with their lineage.",
    }, name="index"),
]
