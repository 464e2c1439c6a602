from django.urls import path

from apps.monitoring.views import area_jobs

app_name = "training"
urlpatterns = [
    path("", area_jobs, {
        "area": "training", "title": "Training",
        "about": "Datasets, fine-tuning runs, checkpoints and evaluations, locally or on Vertex AI.",
    }, name="index"),
]
