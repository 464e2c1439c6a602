from django.urls import path

from apps.training.views import runs as run_views

app_name = "training"
urlpatterns = [
    path("", run_views.index, name="index"),
    path("runs/new/", run_views.run_new, name="run_new"),
    path("runs/new/estimate/", run_views.run_estimate, name="run_estimate"),
    path("runs/<int:run_id>/", run_views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/resume/", run_views.run_resume, name="run_resume"),
    path("runs/<int:run_id>/try/", run_views.run_try, name="run_try"),
    path("runs/<int:run_id>/share/", run_views.run_share, name="run_share"),
    path("compare/", run_views.compare, name="compare"),
]

from apps.training.views import synth as synth_views  # noqa: E402 - each area appends its routes

urlpatterns += [path("synth/", synth_views.synth, name="synth")]

from apps.training.views import datasets as dataset_views  # noqa: E402 - each area appends its routes

urlpatterns += [
    path("datasets/", dataset_views.dataset_list, name="dataset_list"),
    path("datasets/upload/", dataset_views.dataset_upload, name="dataset_upload"),
    path("datasets/import/<uuid:token>/", dataset_views.dataset_import, name="dataset_import"),
    path("datasets/d/<str:name>/", dataset_views.dataset_detail, name="dataset_detail"),
    path("datasets/d/<str:name>/stats/", dataset_views.dataset_stats, name="dataset_stats"),
]
