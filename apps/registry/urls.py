from django.urls import path

from apps.registry import views

app_name = "registry"
urlpatterns = [
    path("", views.model_list, name="index"),
    path("scan/", views.scan, name="scan"),
    path("demo/", views.demo, name="demo"),
    path("demo/smollm2/", views.demo_smollm2, name="demo_smollm2"),
    path("import-gguf/", views.import_gguf, name="import_gguf"),
    path("compare/", views.compare, name="compare"),
    path("m/<int:model_id>/", views.model_detail, name="model_detail"),
    path("m/<int:model_id>/import/", views.import_model, name="import_model"),
    path("m/<int:model_id>/compat/", views.compat, name="compat"),
    path("m/<int:model_id>/diff/", views.diff, name="diff"),
    path("m/<int:model_id>/components/<str:component_id>/compatible/", views.compatible_components,
         name="compatible_components"),
    path("diffs/<str:name>/", views.diff_report, name="diff_report"),
]
