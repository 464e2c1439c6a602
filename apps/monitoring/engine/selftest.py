"""The selftest job: N steps with a sleep each, emitting a metric, no ML.

It exercises the whole spine (queue, events, streaming, cancel) in seconds.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from apps.monitoring.engine.reporter import JobCancelled, Reporter


class SelftestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=10, ge=1, le=100_000)
    step_seconds: float = Field(default=0.5, ge=0, le=3600)
    queue: Literal["light", "heavy"] = "light"
    fail_at: int | None = Field(
        default=None, ge=1, description="raise an error at this step (to see a failure)"
    )


def run_selftest(spec: SelftestSpec, reporter: Reporter) -> dict:
    reporter.log(f"selftest: {spec.steps} steps of {spec.step_seconds}s")
    started = time.monotonic()
    for i in range(1, spec.steps + 1):
        if reporter.cancelled():
            reporter.log(f"cancelled after {i - 1} steps")
            raise JobCancelled
        if spec.step_seconds:
            time.sleep(spec.step_seconds)
        if spec.fail_at == i:
            raise RuntimeError(f"selftest failed on purpose at step {i}")
        # A smooth, deterministic curve so the chart has a shape to show.
        value = round(math.exp(-3 * i / spec.steps) + 0.05 * math.sin(i), 6)
        reporter.step(i, spec.steps, loss=value)
        if i % max(1, spec.steps // 5) == 0:
            reporter.log(f"step {i}/{spec.steps} loss={value:.4f}")
    elapsed = time.monotonic() - started
    reporter.log(f"selftest done in {elapsed:.2f}s")
    return {"steps": spec.steps, "seconds": round(elapsed, 3)}
