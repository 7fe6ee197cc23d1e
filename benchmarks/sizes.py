"""How big the benchmarks' inputs are.

``make bench`` uses the full sizes. ``make bench-smoke`` (CI) sets ``ML_PLATFORM_BENCH_SMOKE=1``,
which the benchmarks' worker processes inherit: every benchmark then runs end to end on a tiny
input, so that a broken benchmark fails the build. Its numbers measure nothing and are written
to ``benchmarks/data/smoke-results.json``, never to ``results.json``.
"""

from __future__ import annotations

import os

SMOKE_ENV = "ML_PLATFORM_BENCH_SMOKE"


def smoke() -> bool:
    return os.environ.get(SMOKE_ENV) == "1"


def size(full, tiny):
    """``full`` for ``make bench``, ``tiny`` for the smoke."""
    return tiny if smoke() else full
