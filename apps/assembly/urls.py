from django.urls import path

from apps.monitoring.views import area_jobs

app_name = "assembly"
urlpatterns = [
    path("", area_jobs, {
        "area": "assembly", "title": "Assembly",
        "about": "Recipes that build new models from components: merges, splices, grafts, adapters.",
    }, name="index"),
]
