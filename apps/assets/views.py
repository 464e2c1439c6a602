import hashlib
import mimetypes
import tarfile
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_http_methods, require_POST

from apps.assets import selectors, services, storage_report
from apps.assets.engine import previews
from apps.assets.engine.errors import BlobMissingError, InPlaceChangedError, StoreError, UnsafePathError
from apps.assets.engine.safeparse import json_loads
from apps.assets.forms import AssetEditForm, BackupForm, RecoveryPointForm, UploadStartForm
from apps.assets.lineage_svg import lineage_svg
from apps.assets.models import Asset, Backup, RecoveryPoint, Upload
from apps.monitoring.services import job_submit
from audobon_site.access import admin_required, can_change, is_admin, require_change
from audobon_site.forms import VisibilityForm, share_from_post


@login_required
def library(request):
    try:
        page = int(request.GET.get("page", 1))
    except ValueError:
        page = 1
    query = request.GET.get("q", "")
    result = selectors.library_search(query=query, user=request.user, page=page)
    ctx = {"result": result, "q": query}
    template = "assets/library.html#results" if request.htmx else "assets/library.html"
    return render(request, template, ctx)


def _version_or_404(request, name: str, number: int | None = None):
    """A version of an asset the requesting user may see; 404 as for a missing one."""
    ref = name if number is None else f"{name}@{number}"
    try:
        return selectors.asset_version_get(ref=ref, user=request.user)
    except LookupError as exc:
        raise Http404(str(exc)) from None


def _asset_to_change_or_404(request, name: str):
    """An asset the requesting user may see (else 404) and change (else 403)."""
    asset = selectors.asset_get(name=name, user=request.user) or _raise404(name)
    require_change(request.user, asset, f"asset {asset.name!r}")
    return asset


def _file_or_404(request, name: str, number: int, path: str):
    """(version, manifest entry) of one file of a version."""
    version = _version_or_404(request, name, number)
    entry = version.manifest.get(path)
    if entry is None:
        raise Http404(f"{version} has no file {path!r}")
    return version, entry


def _version_url(version) -> str:
    return reverse("assets:asset_detail", args=[version.asset.name]) + f"?v={version.number}"


@login_required
def asset_detail(request, name: str):
    number = request.GET.get("v")
    version = _version_or_404(request, name, int(number) if number and number.isdigit() else None)
    asset = version.asset
    graph = selectors.lineage(version=version, user=request.user)
    files = sorted(((p, e["size"], previews.preview_kind(p)) for p, e in version.manifest.items()))
    ctx = {
        "asset": asset, "version": version,
        "versions": selectors.asset_versions(asset=asset, user=request.user),
        "can_change": can_change(request.user, asset),
        "visibility_form": VisibilityForm.for_object(asset, request.user),
        "files": files, "lineage_svg": mark_safe(lineage_svg(graph, _version_url)),  # noqa: S308
        "edit_form": AssetEditForm(initial={
            "tags": ", ".join(t.name for t in asset.tags.all()), "category": asset.category,
            "description": asset.description}),
        "model_summary": _model_summary(version) if asset.kind in ("model", "component") else None,
    }
    return render(request, "assets/asset_detail.html", ctx)


def _model_summary(version) -> dict:
    config = version.manifest.get("config.json")
    text = None
    if config and config["size"] < 1_000_000:
        try:
            text = previews.read_limited(services.version_file_checked(version, "config.json"), 1_000_000)
        except (StoreError, OSError):
            text = None  # the page still shows; the file's own link says what is wrong
    return previews.model_summary(text, {p: e["size"] for p, e in version.manifest.items()})


def _served_file(version, path: str):
    """The file to serve, checked at request time (clean path, inside its folder, unchanged
    since the scan for a file referenced in place); else the response saying why."""
    try:
        return services.version_file_checked(version, path), None
    except (UnsafePathError, BlobMissingError) as exc:
        return None, HttpResponse(f"{path}: not available: {exc}", status=404, content_type="text/plain")
    except (InPlaceChangedError, StoreError) as exc:
        return None, HttpResponse(f"{path}: not served: {exc}", status=409, content_type="text/plain")


@login_required
def file_preview(request, name: str, number: int, path: str):
    version, entry = _file_or_404(request, name, number, path)
    kind = previews.preview_kind(path)
    ctx = {"version": version, "path": path, "kind": kind, "size": entry["size"]}
    blob, refused = _served_file(version, path)
    if refused is not None:
        ctx["error"] = refused.content.decode()
        return render(request, "assets/_preview.html", ctx, status=refused.status_code)
    try:
        if kind == "image":
            ctx["thumb_url"] = reverse("assets:thumbnail", args=[name, number, path])
        elif kind == "dataset":
            ctx["columns"], ctx["rows"] = previews.dataset_rows(blob, name=path)
        elif kind == "text":
            ctx["text"], ctx["more"] = previews.text_head(blob, name=path)
    except (OSError, ValueError) as exc:
        ctx["error"] = f"{path}: cannot preview ({exc})"
    return render(request, "assets/_preview.html", ctx)


@login_required
def thumbnail(request, name: str, number: int, path: str):
    version, entry = _file_or_404(request, name, number, path)
    src, refused = _served_file(version, path)
    if refused is not None:
        return refused
    # Content-addressed where the hash is known; referenced files by where and when.
    key = entry["sha256"] or hashlib.sha256(f"{src}:{src.stat().st_mtime_ns}".encode()).hexdigest()
    dest = settings.AUDOBON_HOME / "cache" / "thumbs" / f"{key}-{previews.THUMB_PX}.png"
    try:
        previews.thumbnail(src, dest)
    except (OSError, ValueError) as exc:
        return HttpResponse(f"cannot make a thumbnail: {exc}", status=415, content_type="text/plain")
    response = FileResponse(dest.open("rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=86400"
    return response


@login_required
def file_raw(request, name: str, number: int, path: str):
    """One file of a version; pictures shown inline, everything else downloaded."""
    version, entry = _file_or_404(request, name, number, path)
    src, refused = _served_file(version, path)
    if refused is not None:
        return refused
    ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    inline = ctype in ("image/png", "image/jpeg", "image/gif", "image/webp")
    try:
        fh = _SizedReader(src.open("rb"), entry["size"], f"{version}: {path}")
    except OSError as exc:
        return HttpResponse(f"{path}: cannot be read: {exc.strerror or exc}", status=409,
                            content_type="text/plain")
    response = FileResponse(fh, content_type=ctype, as_attachment=not inline, filename=Path(path).name)
    response["Content-Length"] = str(entry["size"])
    return response


class _SizedReader:
    """A file read as exactly `size` bytes: a file that grew is cut at its recorded size, one
    that shrank while being sent ends the response with an error instead of a short body
    that a client would wait on forever (Content-Length promises `size`)."""

    def __init__(self, fh, size: int, what: str):
        self.fh, self.left, self.what = fh, size, what
        self.name = getattr(fh, "name", None)

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(want)
        if not data:
            raise InPlaceChangedError(f"{self.what} became shorter while it was being sent")
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.fh.close()


class _Pipe:
    """A write-only file for tarfile that hands what it gets to the response stream."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self):
        out, self.chunks = b"".join(self.chunks), []
        return out


def _tar_stream(version, sources: dict):
    pipe = _Pipe()
    root = f"{version.asset.name}-v{version.number}"
    with tarfile.open(fileobj=pipe, mode="w|") as tar:
        for path, entry in sorted(version.manifest.items()):
            info = tarfile.TarInfo(f"{root}/{path}")
            info.size = entry["size"]
            info.mode = 0o644
            with sources[path].open("rb") as fh:
                tar.addfile(info, _SizedReader(fh, entry["size"], f"{version}: {path}"))
            yield pipe.drain()
    yield pipe.drain()


@login_required
def version_download(request, name: str, number: int):
    version = _version_or_404(request, name, number)
    # Every file checked before the first byte is sent: once streaming, an error can only
    # cut the response, so a changed or refused file answers here, with the reason.
    sources = {}
    for path in sorted(version.manifest):
        sources[path], refused = _served_file(version, path)
        if refused is not None:
            return refused
    response = StreamingHttpResponse(_tar_stream(version, sources), content_type="application/x-tar")
    response["Content-Disposition"] = (
        f'attachment; filename="{version.asset.name}-v{version.number}.tar"')
    return response


@login_required
@require_POST
def version_restore(request, name: str, number: int):
    version = _version_or_404(request, name, number)
    require_change(request.user, version.asset, f"asset {version.asset.name!r}")
    new = services.asset_version_restore(version=version, user=request.user)
    messages.success(request, f"{new} is now current: a copy of version {version.number}.")
    return redirect(_version_url(new))


@login_required
@require_POST
def asset_edit(request, name: str):
    asset = _asset_to_change_or_404(request, name)
    form = AssetEditForm(request.POST)
    if form.is_valid():
        try:
            services.asset_update(asset=asset, tags=form.cleaned_data["tags"].split(","),
                                  category=form.cleaned_data["category"],
                                  description=form.cleaned_data["description"])
            messages.success(request, "Saved.")
        except services.AssetInputError as exc:
            messages.error(request, str(exc))
    return redirect("assets:asset_detail", name=asset.name)


@login_required
@require_POST
def asset_trash_toggle(request, name: str):
    asset = _asset_to_change_or_404(request, name)
    if asset.trashed_at:
        services.asset_untrash(asset=asset)
        messages.success(request, f"{asset.name} is back in the library.")
    else:
        services.asset_trash(asset=asset)
        messages.success(request, f"{asset.name} moved to the trash.")
    return redirect("assets:asset_detail", name=asset.name)


@login_required
@require_POST
def asset_visibility(request, name: str):
    asset = _asset_to_change_or_404(request, name)
    share_from_post(request, asset, asset.name)
    return redirect("assets:asset_detail", name=asset.name)


def _raise404(name):
    raise Http404(f"no asset named {name!r}")


# --- upload ----------------------------------------------------------------------------------

@login_required
def upload_page(request):
    return render(request, "assets/upload.html", {"form": UploadStartForm()})


@login_required
@require_POST
def upload_create(request):
    try:
        data = json_loads(request.body or b"{}", source="the upload request", max_bytes=1_000_000)
        if not isinstance(data, dict):
            raise ValueError("the upload request: a JSON object {name, kind, files}")
        upload = services.upload_create(owner=request.user, name=data.get("name", ""),
                                        kind=data.get("kind", ""), files=data.get("files") or [])
    except (ValueError, services.AssetInputError) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(_upload_state(upload), status=201)


def _upload_state(upload) -> dict:
    received = services.upload_received(upload)
    return {"id": str(upload.pk), "name": upload.name, "files": [
        {**f, "received": got} for f, got in zip(upload.files, received, strict=True)],
        "job": upload.job_id,
        "job_url": reverse("monitoring:job_detail", args=[upload.job_id]) if upload.job_id else None}


def _own_upload(request, upload_id) -> Upload:
    upload = Upload.objects.filter(pk=upload_id, owner=request.user).first()
    if upload is None:
        raise Http404("no such upload")
    return upload


@login_required
@require_http_methods(["GET", "DELETE"])
def upload_state(request, upload_id):
    upload = _own_upload(request, upload_id)
    if request.method == "DELETE":
        services.upload_discard(upload_id=upload.pk)
        return JsonResponse({"discarded": True})
    return JsonResponse(_upload_state(upload))


@login_required
@require_http_methods(["PUT", "POST"])
def upload_chunk(request, upload_id, index: int):
    upload = _own_upload(request, upload_id)
    try:
        offset = int(request.GET.get("offset", "-1"))
        length = int(request.headers.get("Content-Length") or 0)
        received = services.upload_chunk_write(upload=upload, index=index, offset=offset,
                                               stream=request, length=length)
    except (ValueError, services.AssetInputError) as exc:
        return JsonResponse({"error": str(exc), **_upload_state(upload)}, status=409)
    return JsonResponse({"received": received})


@login_required
@require_POST
def upload_finish(request, upload_id):
    upload = _own_upload(request, upload_id)
    try:
        job = services.upload_finish(upload=upload)
    except services.AssetInputError as exc:
        return JsonResponse({"error": str(exc), **_upload_state(upload)}, status=409)
    return JsonResponse({"job": job.pk, "job_url": reverse("monitoring:job_detail", args=[job.pk])})


# --- upkeep pages -------------------------------------------------------------------------------

@login_required
def storage(request):
    admin = is_admin(request.user)
    # The store-wide view is an admin's; everyone else sees their own assets only.
    mine = Asset.objects.all() if admin else Asset.objects.filter(owner=request.user)
    ctx = {"usage": selectors.storage_usage(assets=mine), "is_admin": admin,
           "trash": mine.filter(trashed_at__isnull=False).order_by("-trashed_at")[:50],
           **storage_report.storage_page(user=request.user)}
    if admin:
        count, size = services.blob_store().usage()
        ctx.update(blob_count=count, blob_bytes=size, backups=Backup.objects.all()[:20],
                   backup_form=BackupForm(auto_id="backup_%s"), points=RecoveryPoint.objects.all()[:50],
                   point_form=RecoveryPointForm())
    return render(request, "assets/storage.html", ctx)


@admin_required
@require_POST
def store_job(request, kind: str):
    specs = {"store_verify": {}, "store_gc": {"execute": request.POST.get("execute") == "1"}}
    if kind == "library_backup":
        form = BackupForm(request.POST)
        if not form.is_valid():
            messages.error(request, " ".join(e for errs in form.errors.values() for e in errs)
                           or "Give the backup a name.")
            return redirect("assets:storage")
        specs[kind] = {"name": form.cleaned_data["name"]}  # written under AUDOBON_HOME/backups/
    if kind not in specs:
        raise Http404(kind)
    job = job_submit(kind=kind, spec=specs[kind], owner=request.user)
    return redirect("monitoring:job_detail", job_id=job.pk)


@admin_required
@require_POST
def recovery_point_create(request):
    form = RecoveryPointForm(request.POST)
    try:
        if form.is_valid():
            point = services.recovery_point_create(name=form.cleaned_data["name"], user=request.user)
            messages.success(request, f"Recovery point {point.name!r} holds {len(point.heads)} assets.")
    except services.AssetInputError as exc:
        messages.error(request, str(exc))
    return redirect("assets:storage")


@admin_required
@require_POST
def recovery_point_restore(request, point_id):
    point = RecoveryPoint.objects.filter(pk=point_id).first()
    if point is None:
        raise Http404("no such recovery point")
    result = services.recovery_point_restore(point=point, user=request.user)
    messages.success(request, f"Back at {point.name!r}: {len(result['restored'])} assets restored, "
                              f"{len(result['trashed'])} newer ones moved to the trash.")
    return redirect("assets:library")


@admin_required
@require_POST
def trash_empty(request):
    n = services.trash_empty()
    messages.success(request, f"Deleted {n} assets for good. Run gc to free their space.")
    return redirect("assets:storage")


# --- caches and cleanup (admins) -----------------------------------------------------------------

@admin_required
@require_POST
def cache_clear(request, name: str):
    if name not in storage_report.CACHE_NAMES:
        raise Http404(f"no cache named {name!r}")
    done = storage_report.cache_clear(name=name)
    if name == "models":
        messages.success(request, f"Asked {done['workers']} heavy worker(s) to drop {done['entries']} loaded "
                                  "model(s); they do so within a few seconds." if done["workers"]
                         else "No heavy worker holds a model cache now.")
    else:
        messages.success(request, f"Cleared the {name} cache: {done['entries']} entries.")
    return redirect(reverse("assets:storage") + "#caches")


@admin_required
@require_POST
def storage_cleanup(request, name: str):
    if name not in storage_report.CLEANUP_NAMES:
        raise Http404(f"no cleanup named {name!r}")
    done = storage_report.cleanup_run(name=name, owner=request.user)
    if done.get("job"):
        return redirect("monitoring:job_detail", job_id=done["job"])
    messages.success(request, f"Freed {done['bytes'] or 0} bytes ({name}).")
    return redirect(reverse("assets:storage") + "#cleanup")
