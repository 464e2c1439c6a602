from django.urls import path

from apps.assets import views

app_name = "assets"
urlpatterns = [
    path("", views.library, name="library"),
    path("upload/", views.upload_page, name="upload"),
    path("uploads/", views.upload_create, name="upload_create"),
    path("uploads/<uuid:upload_id>/", views.upload_state, name="upload_state"),
    path("uploads/<uuid:upload_id>/files/<int:index>/", views.upload_chunk, name="upload_chunk"),
    path("uploads/<uuid:upload_id>/finish/", views.upload_finish, name="upload_finish"),
    path("storage/", views.storage, name="storage"),
    path("storage/jobs/<str:kind>/", views.store_job, name="store_job"),
    path("recovery-points/", views.recovery_point_create, name="recovery_point_create"),
    path("recovery-points/<uuid:point_id>/restore/", views.recovery_point_restore,
         name="recovery_point_restore"),
    path("trash/empty/", views.trash_empty, name="trash_empty"),
    path("storage/caches/<str:name>/clear/", views.cache_clear, name="cache_clear"),
    path("storage/cleanup/<str:name>/", views.storage_cleanup, name="storage_cleanup"),
    path("a/<str:name>/", views.asset_detail, name="asset_detail"),
    path("a/<str:name>/edit/", views.asset_edit, name="asset_edit"),
    path("a/<str:name>/trash/", views.asset_trash_toggle, name="asset_trash"),
    path("a/<str:name>/visibility/", views.asset_visibility, name="asset_visibility"),
    path("a/<str:name>/v/<int:number>/download/", views.version_download, name="version_download"),
    path("a/<str:name>/v/<int:number>/restore/", views.version_restore, name="version_restore"),
    path("a/<str:name>/v/<int:number>/files/<path:path>", views.file_preview, name="file_preview"),
    path("a/<str:name>/v/<int:number>/thumbs/<path:path>", views.thumbnail, name="thumbnail"),
    path("a/<str:name>/v/<int:number>/raw/<path:path>", views.file_raw, name="file_raw"),
]
