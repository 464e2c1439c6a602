"""The registry of job kinds: {name: JobKind}, filled where each kind is defined.

A kind names its spec (a pydantic model, checked before anything is queued), the
queue it runs on, and the function that runs it in a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

QueueChoice = str | Callable[[Any], str]


@dataclass(frozen=True)
class JobKind:
    name: str
    label: str
    area: str  # the app whose pages list it: monitoring, assets, registry, assembly, training
    spec_model: type[BaseModel]
    run: Callable[..., dict | None]  # run(spec, reporter, job) -> result JSON
    queue: QueueChoice = "light"
    # Called with a job of this kind whose worker died (now `interrupted`): a kind that can
    # continue from where it stopped (checkpoints) submits its continuation here.
    on_interrupted: Callable[[Any], object] | None = None
    # What a job of this kind needs before it runs, from its plan or estimate:
    # needs(spec) -> {"memory": bytes, "disk": bytes, "device": "cpu" | "cuda[:N]"} or None.
    needs: Callable[[Any], dict | None] | None = None

    @property
    def queue_label(self) -> str:
        return "queue chosen by the spec" if callable(self.queue) else f"{self.queue} queue"

    def queue_for(self, spec: BaseModel) -> str:
        return self.queue(spec) if callable(self.queue) else self.queue


JOB_KINDS: dict[str, JobKind] = {}


def job_kind(*, name: str, spec: type[BaseModel], area: str, label: str = "",
             queue: QueueChoice = "light", on_interrupted: Callable[[Any], object] | None = None,
             needs: Callable[[Any], dict | None] | None = None):
    """Register the decorated function as the runner of job kind `name`."""

    def register(fn):
        if name in JOB_KINDS:
            raise ValueError(f"job kind {name!r} is registered twice")
        JOB_KINDS[name] = JobKind(
            name=name, label=label or name, area=area, spec_model=spec, run=fn, queue=queue,
            on_interrupted=on_interrupted, needs=needs,
        )
        return fn

    return register
