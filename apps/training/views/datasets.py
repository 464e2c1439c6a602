"""Dataset pages: the list with an upload form, the mapping step (a preview of the first
rows under the chosen format and mapping), and the dataset page (card, rows, token
statistics, the chat template applied to a row). Every page renders without JavaScript;
htmx only re-renders the preview and polls the statistics while a job runs."""

from __future__ import annotations

import json
import uuid

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from apps.assets import selectors as asset_selectors
from apps.monitoring.services import JobSpecError, job_submit
from apps.registry import services as registry_services
from apps.registry.selectors import models_list
from apps.training import selectors
from apps.training.engine import dataset_prep
from apps.training.engine.dataset_prep import FIELDS, FORMATS, DatasetError
from apps.training.services import dataset as services

PREVIEW_ROWS = 10
CELL_CHARS = 300
ACCEPT = ",".join(dataset_prep.SOURCE_KINDS)


def _cell(value) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"


# --- the list and the upload -------------------------------------------------------------------

@login_required
def dataset_list(request, status: int = 200, upload_error: str = ""):
    query = request.GET.get("q", "")
    ctx = {"datasets": list(selectors.datasets_list(query=query)[:200]), "q": query,
           "jobs": selectors.dataset_jobs(user=request.user), "accept": ACCEPT,
           "max_mb": services.MAX_UPLOAD_BYTES >> 20, "upload_error": upload_error}
    return render(request, "training/dataset_list.html", ctx, status=status)


class _CappedUpload(TemporaryFileUploadHandler):
    """Spools the upload to a temporary file and stops reading past the size limit, so a
    body that lies about its length is cut off, not stored."""

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > services.MAX_UPLOAD_BYTES:
            self.request.dataset_upload_too_big = True
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)


@csrf_exempt  # checked by _upload once the size-capped handler is in place
@login_required
@require_POST
def dataset_upload(request):
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > services.MAX_UPLOAD_BYTES + 64 * 1024:
        return dataset_list(request, status=413, upload_error=_too_big())
    # The handlers must be set before anything reads the body (the CSRF check does).
    request.upload_handlers = [_CappedUpload(request)]
    return _upload(request)


def _too_big() -> str:
    return (f"The file is over {services.MAX_UPLOAD_BYTES >> 20} MB: import it with "
            "`audobon import_dataset PATH` instead.")


@csrf_protect
def _upload(request):
    upload = request.FILES.get("file")
    if getattr(request, "dataset_upload_too_big", False):
        return dataset_list(request, status=413, upload_error=_too_big())
    if upload is None:
        return dataset_list(request, status=400, upload_error="Choose a file to upload.")
    try:
        token = services.dataset_upload_stage(owner=request.user, filename=upload.name or "",
                                              chunks=upload.chunks())
    except DatasetError as exc:
        return dataset_list(request, status=400, upload_error="; ".join(exc.problems))
    finally:
        upload.close()
    return redirect("training:dataset_import", token=uuid.UUID(token))


# --- the mapping step ------------------------------------------------------------------------------

class ImportForm(forms.Form):
    name = forms.CharField(max_length=200)
    format = forms.ChoiceField(choices=[("", "detect")] + [(f, f) for f in FORMATS], required=False)
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0)
    validation_fraction = forms.FloatField(min_value=0, max_value=0.9, initial=0.1)
    labels = forms.CharField(max_length=2000, required=False,
                             help_text="allowed labels, comma-separated (classification)")

    def __init__(self, *args, columns: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.columns = columns
        choices = [("", "as it is")] + [(f, f) for f in FIELDS]
        for i, column in enumerate(columns):
            self.fields[f"map_{i}"] = forms.ChoiceField(choices=choices, required=False, label=column)

    def mapping_fields(self):
        return [self[f"map_{i}"] for i in range(len(self.columns))]

    def clean(self):
        data = super().clean()
        mapping = {c: data.get(f"map_{i}") for i, c in enumerate(self.columns) if data.get(f"map_{i}")}
        targets = list(mapping.values())
        if len(set(targets)) != len(targets):
            raise forms.ValidationError("Two columns are mapped to the same field.")
        data["mapping"] = mapping
        labels = [x.strip() for x in (data.get("labels") or "").split(",") if x.strip()]
        data["label_list"] = labels or None
        return data


def _staged_or_404(request, token):
    staged = selectors.staged_upload_get(token=token.hex, user=request.user)
    if staged is None:
        raise Http404("no such upload (it was imported, or belongs to someone else)")
    return staged


def _preview(staged, form: ImportForm | None) -> dict:
    fmt = mapping = labels = None
    if form is not None and form.is_valid():
        fmt = form.cleaned_data.get("format") or None
        mapping = form.cleaned_data["mapping"]
        labels = form.cleaned_data["label_list"]
    try:
        preview = dataset_prep.preview_source(staged.path, fmt=fmt, mapping=mapping, labels=labels,
                                              limit=PREVIEW_ROWS)
    except Exception as exc:  # a hostile file gets a message, never a 500
        return {"problems": [f"{staged.filename}: cannot be read ({exc})"], "columns": [], "cells": []}
    preview["cells"] = [[_cell(r.get(c)) for c in preview["columns"]] for r in preview["rows"]]
    preview["out"] = [json.dumps(r, ensure_ascii=False, indent=1) for r in preview["rows_out"]]
    return preview


@login_required
@require_http_methods(["GET", "POST"])
def dataset_import(request, token):
    staged = _staged_or_404(request, token)
    try:
        columns = dataset_prep.preview_source(staged.path, limit=PREVIEW_ROWS)["columns"]
    except Exception:  # a file that cannot be read shows its problem in the preview
        columns = []
    initial = {"name": services.dataset_default_name(staged.filename), "seed": 0,
               "validation_fraction": 0.1}
    data = request.POST if request.method == "POST" else (request.GET if "name" in request.GET else None)
    form = ImportForm(data, columns=columns, initial=initial)
    # "preview" re-renders with the choices made (htmx on each change, or the Preview
    # button); posted, so the CSRF token never lands in a URL.
    previewing = request.method == "GET" or "preview" in request.POST
    if not previewing and form.is_valid():
        cd = form.cleaned_data
        try:
            job = services.dataset_import_submit(
                upload=staged, owner=request.user, name=cd["name"], fmt=cd.get("format") or None,
                mapping=cd["mapping"], seed=cd["seed"], validation_fraction=cd["validation_fraction"],
                labels=cd["label_list"])
        except JobSpecError as exc:
            messages.error(request, str(exc))
        else:
            return redirect("monitoring:job_detail", job_id=job.pk)
    ctx = {"staged": staged, "form": form, "preview": _preview(staged, form if data else None),
           "action": reverse("training:dataset_import", args=[token])}
    status = 200 if previewing else 400
    template = "training/dataset_import.html#preview" if request.htmx else "training/dataset_import.html"
    return render(request, template, ctx, status=status)


# --- the dataset page ------------------------------------------------------------------------------------

def _version_or_404(name: str, number: str | None):
    ref = f"{name}@{number}" if number else name
    try:
        return selectors.dataset_version_get(ref=ref)
    except LookupError as exc:
        raise Http404(str(exc)) from None


def _model_names() -> list[str]:
    """Models a page may name: registered ones only, never a path typed in a form."""
    return [m.asset.name for m in models_list().filter(error="").exclude(asset=None)]


def _stats_context(version, user) -> dict:
    reports = selectors.dataset_stats_reports(version=version)
    jobs = selectors.dataset_jobs(user=user, name=version.asset.name)
    pending = [j for j in jobs if j.kind == "dataset_stats" and j.status in ("queued", "running")]
    ctx: dict = {"reports": reports, "pending": pending,
                 "failed_stats": [j for j in jobs if j.kind == "dataset_stats" and j.status == "failed"][:1]}
    if reports:
        latest = reports[0]
        ctx["stats"] = latest.metadata.get("token_stats", {})
        ctx["stats_report"] = latest
        ctx["histogram_url"] = reverse("assets:file_raw", args=[latest.asset.name, latest.number,
                                                                "lengths.png"])
    return ctx


def _chat_context(request, version, models: list[str], card: dict) -> dict:
    model = request.GET.get("model", "")
    row_text = request.GET.get("row", "1")
    ctx: dict = {"chat_model": model, "chat_row": row_text}
    if not model:
        return ctx
    train = card.get("rows", {}).get("train", 0)
    if model not in models:
        ctx["chat_error"] = f"{model!r} is not a registered model"
    elif not row_text.isdigit() or not 1 <= int(row_text) <= max(train, 1):
        ctx["chat_error"] = f"row is a number from 1 to {train}"
    else:
        rows = selectors.dataset_rows(version=version, split="train", limit=1, start=int(row_text) - 1)
        try:
            folder, _ = registry_services.resolve_model(model)
            ctx["chat_preview"] = dataset_prep.chat_preview(rows[0], folder) if rows else ""
        except (ValueError, LookupError, OSError) as exc:
            ctx["chat_error"] = str(exc)
    return ctx


@login_required
def dataset_detail(request, name: str):
    version = _version_or_404(name, request.GET.get("v"))
    card = selectors.dataset_card(version)
    models = _model_names()
    ctx = {"version": version, "asset": version.asset, "card": card,
           "versions": asset_selectors.asset_versions(asset=version.asset),
           "rows": selectors.dataset_rows(version=version, split="train", limit=PREVIEW_ROWS),
           "validation_rows": selectors.dataset_rows(version=version, split="validation", limit=3),
           "models": models, "jobs": selectors.dataset_jobs(user=request.user, name=name),
           **_stats_context(version, request.user), **_chat_context(request, version, models, card)}
    partial = request.GET.get("partial")
    if request.htmx and partial in ("stats", "chat"):
        return render(request, f"training/dataset_detail.html#{partial}", ctx)
    return render(request, "training/dataset_detail.html", ctx)


@login_required
@require_POST
def dataset_stats(request, name: str):
    version = _version_or_404(name, request.POST.get("v"))
    model = request.POST.get("model", "")
    url = reverse("training:dataset_detail", args=[version.asset.name]) + f"?v={version.number}"
    if model not in _model_names():
        messages.error(request, "Pick a registered model for the token statistics.")
        return redirect(url)
    try:
        job = job_submit(kind="dataset_stats", spec={"dataset": str(version), "model": model},
                         owner=request.user)
    except JobSpecError as exc:
        messages.error(request, str(exc))
        return redirect(url)
    messages.info(request, f"Token statistics with {model}: job {job.pk}.")
    return redirect(url)
