from django.urls import path

from apps.assembly import views

app_name = "assembly"
urlpatterns = [
    path("", views.editor, name="index"),
    path("plan/", views.plan, name="plan"),
    path("gradient/", views.gradient, name="gradient"),
    path("run/", views.run, name="run"),
]
