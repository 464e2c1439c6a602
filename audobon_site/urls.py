from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.monitoring.views import healthz
from audobon_site.login_links import login_link_view

urlpatterns = [
    path("", include("apps.monitoring.urls")),
    path("library/", include("apps.assets.urls")),
    path("registry/", include("apps.registry.urls")),
    path("assembly/", include("apps.assembly.urls")),
    path("training/", include("apps.training.urls")),
    path("healthz", healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("login/link/<str:uidb64>/<str:token>/", login_link_view, name="login_link"),
    path("admin/", admin.site.urls),
]
