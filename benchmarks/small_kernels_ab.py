"""A/B of a change to convopt's small kernels, "new" as shipped against "old" without it (``--change``):

- ``fallback``: the default CPU schedule (schedules/cpu_fallback.py): a loop nest below
  ``MIN_PARALLEL_ITERATIONS`` runs on one core and a blocked mean divides in the loop that summed it; old: every
  loop nest parallel, the division a loop of its own.
- ``head``: the dense kernel computes a classifier head's global average pool and norm in its prologue
  (backends/conv_kernels.py ``plan_prologues``); old: the pool, the norm and the dense a kernel each.
- ``se``: a squeeze-excite is one kernel (schedules/squeeze_excite.py), which also scales the weight of the conv
  its gate was folded into; old: the mean, two gemv convs and the multiply (or the weight's scaling) a kernel each.
- ``mixer``: InceptionNeXt's token mixer is one kernel where its block is not fused whole
  (schedules/token_mixer.py); old: the split, a depthwise conv per branch and the cat.

Both builds of each model in this process, timed in alternating rounds (convopt.cost.calibrate.measure_interleaved:
a round is ``--seconds`` of calls of each build, the mean a call), so a slow phase of the shared machine hits both
alike.

    python benchmarks/small_kernels_ab.py --change head --models efficientnet_b0,resnet18 --rounds 11
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import timm
import torch

import convopt
from convopt.cost.calibrate import measure_interleaved, repeated
from convopt.backends import conv_kernels
from convopt.passes import fuse_blocks, match_blocks
from convopt.schedules import cpu_fallback


def build(model, x, variant: str, change: str):
    shipped = (cpu_fallback.MIN_PARALLEL_ITERATIONS, cpu_fallback.ParallelFallback._epilogue_under,
               conv_kernels.plan_prologues, match_blocks._squeeze_excites, match_blocks._token_mixers,
               fuse_blocks.alternatives)
    if variant == "old" and change == "fallback":
        cpu_fallback.MIN_PARALLEL_ITERATIONS = 1
        cpu_fallback.ParallelFallback._epilogue_under = lambda self, sch, reduction, outer: []
    if variant == "old" and change == "head":
        conv_kernels.plan_prologues = lambda graph: {}
    if variant == "old" and change == "se":
        match_blocks._squeeze_excites = lambda graph, taken: []
    if variant == "old" and change == "mixer":
        alternatives = fuse_blocks.alternatives
        match_blocks._token_mixers = lambda graph, taken: []
        fuse_blocks.alternatives = lambda graph, block: tuple(
            part for part in alternatives(graph, block) if part.kind != "token_mixer")
    try:
        return convopt.optimize(model, x)
    finally:
        (cpu_fallback.MIN_PARALLEL_ITERATIONS, cpu_fallback.ParallelFallback._epilogue_under,
         conv_kernels.plan_prologues, match_blocks._squeeze_excites, match_blocks._token_mixers,
         fuse_blocks.alternatives) = shipped


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--change", choices=("fallback", "head", "se", "mixer"), default="head")
    parser.add_argument("--models", default="efficientnet_b0,resnet18,convnext_atto,mobilenetv2_100")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=0.4, help="of calls a round, each build (default 0.4)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = timm.create_model(name).eval(), torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            runs = {v: repeated(lambda f=build(model, x, v, args.change): f(x), args.seconds) for v in ("new", "old")}
            times = measure_interleaved({v: run for v, (run, _) in runs.items()}, rounds=args.rounds, warmup=1)
        per_call = {v: [t / runs[v][1] for t in samples] for v, samples in times.items()}
        ratios = [new / old for new, old in zip(per_call["new"], per_call["old"])]
        print(f"{name}: new {min(per_call['new']) * 1e3:.3f} ms, old {min(per_call['old']) * 1e3:.3f} ms (best "
              f"rounds); new / old by round: median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
