"""The job websocket: current state first, then every new event as a progress partial.

Embedded default: workers are other processes with no shared channel layer, so the
consumer tails the JobEvent table. With Redis: workers push through channels_redis
(`job.<id>` groups) and a slow poll only covers a lost message.
"""

from __future__ import annotations

import asyncio
import contextlib

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string

from apps.monitoring import selectors

EMBEDDED_POLL_S = 0.05
REDIS_SAFETY_POLL_S = 2.0
CLOSE_FORBIDDEN = 4403


def _render_update(job_id: int, after: int, force: bool,
                   csrf_token: str) -> tuple[str | None, int, bool]:
    """(html or None when nothing is new, the last event id, whether the job has ended)."""
    from apps.monitoring.models import Job

    job = Job.objects.select_related("owner").get(pk=job_id)
    ctx = selectors.job_live_context(job=job, after=after)
    if not force and not ctx["new_events"]:
        return None, after, job.is_finished
    # The partial's cancel/retry forms post like the page's own: the browser's CSRF
    # cookie is a valid form token.
    ctx["csrf_token"] = csrf_token
    html = render_to_string("monitoring/job_detail.html#ws_update", ctx)
    return html, ctx["last_event_id"], job.is_finished


class JobConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        job = await database_sync_to_async(selectors.job_visible_get)(
            user=self.scope.get("user"), job_id=self.job_id
        )
        # Accept first so the browser sees the close code rather than a failed handshake.
        await self.accept()
        if job is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.after = _after_from_query(self.scope.get("query_string", b""))
        self.csrf_token = self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
        self.lock = asyncio.Lock()
        self.group = f"job.{self.job_id}"
        self.redis = bool(settings.REDIS_URL)
        if self.redis:
            await self.channel_layer.group_add(self.group, self.channel_name)
        # Current state first, then only what is new. `after` is the last event the page
        # already lists, so the history appended over the socket never repeats a line.
        await self.push(force=True)
        self.poller = asyncio.create_task(self.poll())

    async def disconnect(self, code):
        await _stop(getattr(self, "poller", None))
        if getattr(self, "redis", False):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        pass  # the page only listens

    async def job_event(self, message):
        await self.push()

    async def poll(self):
        interval = REDIS_SAFETY_POLL_S if self.redis else EMBEDDED_POLL_S
        while True:
            await asyncio.sleep(interval)
            if await self.push():
                return

    async def push(self, force: bool = False) -> bool:
        """Send what is new; True once the job has finished and the socket is closed."""
        async with self.lock:
            if getattr(self, "done", False):
                return True
            html, last, finished = await database_sync_to_async(_render_update)(
                self.job_id, self.after, force, self.csrf_token
            )
            if html is not None:
                await self.send(text_data=html)
                self.after = last
            if finished:
                # The events were counted before the job row was read, so the last ones
                # (the final state among them, committed with the row) may not be in that
                # update yet: one more read after seeing the end sends them before closing.
                html, last, _ = await database_sync_to_async(_render_update)(
                    self.job_id, self.after, False, self.csrf_token
                )
                if html is not None:
                    await self.send(text_data=html)
                    self.after = last
                self.done = True
                await self.close(code=1000)
                return True
            return False


def _after_from_query(query: bytes) -> int:
    from urllib.parse import parse_qs

    values = parse_qs(query.decode("latin-1")).get("after", ["0"])
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


WEEK_CHART_EVERY_S = 60.0  # the week's chart is of minute means: redrawn once a minute


def _render_dashboard(history_week: str | None) -> tuple[str, str]:
    """(the live part's html, the week's chart drawn for it)."""
    ctx = selectors.dashboard_live_context(history_week=history_week)
    return render_to_string("monitoring/dashboard.html#machine", ctx), ctx["history_week"]


def dashboard_push_seconds() -> float:
    return float(settings.AUDOBON_SAMPLE_SECONDS)


class DashboardConsumer(AsyncWebsocketConsumer):
    """The dashboard's live part: the newest resource sample, the queues and the charts,
    sent on connect and then every sample interval when any of it changed. Every process
    reads the same tables, so this works the same embedded and with Redis."""

    async def connect(self):
        await self.accept()
        user = self.scope.get("user")
        if not getattr(user, "is_authenticated", False):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.sent = None
        self.week, self.week_at = None, 0.0
        await self.push()
        self.poller = asyncio.create_task(self.poll())

    async def disconnect(self, code):
        await _stop(getattr(self, "poller", None))

    async def receive(self, text_data=None, bytes_data=None):
        pass  # the page only listens

    async def poll(self):
        while True:
            await asyncio.sleep(dashboard_push_seconds())
            await self.push()

    async def push(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self.week_at >= WEEK_CHART_EVERY_S:
            self.week = None
        html, week = await database_sync_to_async(_render_dashboard)(self.week)
        if self.week is None:
            self.week, self.week_at = week, loop.time()
        if html != self.sent:
            await self.send(text_data=html)
            self.sent = html


async def _stop(task: asyncio.Task | None) -> None:
    """Cancel a consumer's polling task (if it was started) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
