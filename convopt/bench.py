"""Benchmark helpers: contenders timed interleaved in one process (A B C A B C ...), medians and ratios.

The machine is shared and noisy, so contenders are never timed in separate blocks: each round runs
every contender once, in a rotating order, and the summary is the median per contender and the
ratio of medians against a baseline.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def measure_interleaved(contenders: dict[str, Callable[[], object]], *, rounds: int = 20,
                        warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each contender; every round calls all of them, rotating the start."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    base = statistics.median(times[baseline])
    out = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        out[name] = {"median_ms": med * 1e3, "min_ms": min(samples) * 1e3, "ratio_vs_" + baseline: med / base,
                     "runs": len(samples)}
    return out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
