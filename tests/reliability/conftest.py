"""The fuzzing budget shared by tests/reliability/test_fuzz_*.py.

Each fuzz test runs a fixed, derandomized number of examples in CI (sized so a file takes
at most about 20 s on a loaded 2-core machine). `AUDOBON_FUZZ_EXAMPLES=N` multiplies every
budget by N for a longer run on demand:

    AUDOBON_FUZZ_EXAMPLES=20 .venv/bin/pytest -q tests/reliability -k fuzz -p no:randomly
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_factor() -> float:
    raw = os.environ.get("AUDOBON_FUZZ_EXAMPLES", "1").strip() or "1"
    try:
        factor = float(raw)
    except ValueError:
        raise ValueError(f"AUDOBON_FUZZ_EXAMPLES={raw!r} is not a number (a multiplier of the budget)") \
            from None
    return max(factor, 0.01)


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: `examples` cases (times AUDOBON_FUZZ_EXAMPLES),
    derandomized (the same cases on every run, so CI is reproducible), no deadline per case
    (a loaded machine must not fail a test; the tests bound time themselves), no database."""
    return settings(max_examples=max(1, round(examples * fuzz_factor())), derandomize=True,
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])
