"""Benchmark helpers: contenders timed interleaved in one process (A B C A B C ...), medians and ratios.

The machine is shared and noisy, so contenders are never timed in separate blocks: each round runs
every contender once, in a rotating order, and the summary is the median per contender and the
ratio of medians against a baseline.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def measure_interleaved(contenders: dict[str, Callable[[], object]], *, rounds: int = 20,
                        warmup: int = 3, pause: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each contender; every round calls all of them, rotating the start.

    ``pause`` seconds pass before each timed call: thread pools (OpenMP, ONNX Runtime, TVM) spin for a
    while after their work, and without the pause those spinning threads slow down the next contender.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            time.sleep(pause)
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


def write_report(out_prefix: str, command: str, caption: str, table: str, data: dict) -> None:
    """``out_prefix.md`` (the command, what was measured, the table) and ``out_prefix.json`` (raw data)."""
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(out_prefix + ".json").write_text(json.dumps({"command": command, **data}, indent=2))
    Path(out_prefix + ".md").write_text(f"`{command}` ({caption})\n\n{table}\n")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def compare_model(spec: str, contenders: list[str], rounds: int = 20, warmup: int = 3,
                  input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> dict:
    """Prepare each contender on one model, check its output against eager, time all interleaved."""
    from .contenders import prepare
    from .models import load_model
    from .optimize import relative_error

    torch.manual_seed(0)
    model = load_model(spec).eval()
    x = torch.randn(input_shape)
    with torch.no_grad():
        expected = model(x)
    runs, info = {}, {}
    for name in contenders:
        start = time.perf_counter()
        try:
            runs[name] = prepare(name, model, x)
            out = runs[name]()
        except Exception as e:  # a peer that cannot run this model is reported, not fatal
            info[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            runs.pop(name, None)
            continue
        info[name] = {"prepare_s": time.perf_counter() - start, "relative_error": relative_error(out, expected)}
    times = measure_interleaved(runs, rounds=rounds, warmup=warmup)
    for name, samples in times.items():
        info[name]["median_ms"] = statistics.median(samples) * 1e3
    return info
