from django.urls import path

from apps.monitoring import views

app_name = "monitoring"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/selftest/", views.selftest_submit, name="selftest_submit"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job_retry"),
    path("jobs/<int:job_id>/priority/", views.job_priority, name="job_priority"),
    path("jobs/<int:job_id>/share/", views.job_share, name="job_share"),
    path("errors/", views.error_list, name="error_list"),
    path("queues/<str:name>/pause/", views.queue_pause, name="queue_pause"),
    path("queues/<str:name>/resume/", views.queue_resume, name="queue_resume"),
]
