"""A/B of the default CPU schedule's handling of small kernels (schedules/cpu_fallback.py): "new" as shipped
(a loop nest below ``MIN_PARALLEL_ITERATIONS`` runs on one core; a blocked mean divides in the loop that summed
it) against "old" (every loop nest parallel; the division a loop of its own). Both builds of each model in this
process, timed in alternating rounds (median of each round's calls, best round), so a slow phase of the shared
machine hits both alike.

    python benchmarks/small_kernels_ab.py --models efficientnet_b0,resnet18 --rounds 11 --calls 200
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import timm
import torch

import convopt
from convopt.schedules import cpu_fallback


def build(model, x, variant: str):
    shipped = (cpu_fallback.MIN_PARALLEL_ITERATIONS, cpu_fallback.ParallelFallback._epilogue_under)
    if variant == "old":
        cpu_fallback.MIN_PARALLEL_ITERATIONS = 1
        cpu_fallback.ParallelFallback._epilogue_under = lambda self, sch, reduction, outer: []
    try:
        return convopt.optimize(model, x)
    finally:
        cpu_fallback.MIN_PARALLEL_ITERATIONS, cpu_fallback.ParallelFallback._epilogue_under = shipped


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="efficientnet_b0,resnet18,convnext_atto,mobilenetv2_100")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = timm.create_model(name).eval(), torch.randn(1, 3, 224, 224)
        builds = {v: build(model, x, v) for v in ("new", "old")}
        best = {v: float("inf") for v in builds}
        ratios = []
        with torch.no_grad():
            for f in builds.values():
                for _ in range(20):
                    f(x)
            for r in range(args.rounds):
                medians = {}
                for v in (("new", "old") if r % 2 == 0 else ("old", "new")):
                    times = []
                    for _ in range(args.calls):
                        start = time.perf_counter()
                        builds[v](x)
                        times.append(time.perf_counter() - start)
                    medians[v] = statistics.median(times)
                    best[v] = min(best[v], medians[v])
                ratios.append(medians["new"] / medians["old"])
        print(f"{name}: new {best['new'] * 1e3:.3f} ms, old {best['old'] * 1e3:.3f} ms (best rounds); new / old "
              f"by round: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
