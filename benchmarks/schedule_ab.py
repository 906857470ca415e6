"""A/B of one lowering's CPU schedule, or of the fused inverted residual kernel: another checkout's version of
its module ("old") against this tree's ("new"), the same computation, both compiled in this process and timed
in alternating rounds (best of ``--rounds`` rounds of ``--calls`` calls each), so a slow phase of the shared
machine hits both alike.

    git worktree add /tmp/old HEAD
    python benchmarks/schedule_ab.py /tmp/old depthwise --activation silu
    python benchmarks/schedule_ab.py /tmp/old depthwise --case 672,14,5,1 --case 96,112,3,2 --layout nchw
    python benchmarks/schedule_ab.py /tmp/old fused_block --activation silu --case 24,144,0,56,3,1

A conv case is C,HW,K,S[,G]: C channels in and out on an HW x HW map, a K x K kernel of stride S padded K // 2,
G groups (default: C, depthwise); input and output in channel blocks of the target's lanes unless
``--layout nchw``. A fused_block case is C,E,O,HW,K,S (O 0: no projection, the expand and depthwise part
alone), input and output blocked where a model would block them (fused_block.build).
``CONVOPT_HOST_CPU=znver3`` times the AVX2 build on an AVX-512 host.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path


# efficientnet_b0's and mobilenetv2_100's depthwise convs and inverted residual blocks
DEPTHWISE_CASES = ["32,112,3,1", "96,112,3,2", "144,56,3,1", "144,56,5,2", "240,28,5,1", "240,28,3,2", "480,14,3,1",
                   "480,14,5,1", "672,14,5,1", "672,14,5,2", "1152,7,5,1", "1152,7,3,1", "576,14,3,1", "960,7,3,1"]
BLOCK_CASES = ["16,96,0,112,3,2", "24,144,0,56,3,1", "24,144,0,56,5,2", "40,240,0,28,3,2", "16,96,24,112,3,2",
               "24,144,24,56,3,1", "32,192,32,28,3,1", "64,384,64,14,3,1", "160,960,160,7,3,1"]


def old_module(old_tree: Path, module_name: str):
    """``old_tree``'s version of module ``module_name``, imported beside this tree's (same package, so its
    relative imports take this tree's modules)."""
    path = old_tree.joinpath(*module_name.split(".")).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(module_name + "_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def old_lowering(old_tree: Path, name: str):
    """This tree's lowering ``name`` with the schedule of ``old_tree``'s version of its module."""
    from convopt.schedules.lowerings import lowering

    new = lowering(name)
    module = old_module(old_tree, new.schedule_cpu.__module__)
    return dataclasses.replace(new, schedule_cpu=getattr(module, new.schedule_cpu.__name__))


def conv_builds(args, target) -> dict[str, dict]:
    """case -> {"old": call, "new": call} for a conv lowering."""
    import torch

    import convopt.schedules.kernel as kernel
    from convopt.schedules.conv_spec import ConvSpec
    from convopt.schedules.lowerings import lowering

    builds = {"old": old_lowering(args.old_tree, args.lowering), "new": lowering(args.lowering)}
    block = target.lanes if args.layout == "blocked" else None
    cases = {}
    for case in args.case or DEPTHWISE_CASES:
        c, hw, k, s, *g = (int(v) for v in case.split(","))
        groups = g[0] if g else c
        spec = ConvSpec(1, c, hw, hw, c, (k, k), (s, s), (k // 2, k // 2), groups=groups)
        w, b, x = torch.randn(c, c // groups, k, k), torch.randn(c), torch.randn(1, c, hw, hw)
        label = f"{c}@{hw} {k}x{k} s{s}" + (f" g{groups}" if groups != c else "")
        cases[label] = {}
        for name, low in builds.items():
            kernel.lowering = lambda _name, low=low: low  # build_kernel looks the lowering up by name
            cases[label][name] = kernel.build_kernel(args.lowering, spec, w, b, target=target,
                                                     activation=args.activation, in_block=block,
                                                     out_block=block).bound(x)
    return cases


def block_builds(args, target) -> dict[str, dict]:
    """case -> {"old": call, "new": call} for the fused inverted residual kernel."""
    import convopt.schedules.fused_block as new

    old = old_module(args.old_tree, new.__name__)
    cases = {}
    for case in args.case or BLOCK_CASES:
        c, e, o, hw, k, s = (int(v) for v in case.split(","))
        cases[f"{c}>{e}>{o or '-'} @{hw} {k}x{k} s{s}"] = {
            name: module.build(module.InvertedResidual.of(c, e, o or None, hw, hw, k, s, args.activation), target)
            for name, module in (("old", old), ("new", new))}
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old_tree", type=Path, help="a checkout of convopt (e.g. a git worktree of HEAD)")
    parser.add_argument("lowering", help="a conv lowering's name, or fused_block")
    parser.add_argument("--case", action="append", metavar="C,HW,K,S[,G]")
    parser.add_argument("--activation", default="silu")
    parser.add_argument("--layout", choices=("blocked", "nchw"), default="blocked")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    from convopt.target import host_target

    target = host_target()
    layout = "as in a model" if args.lowering == "fused_block" else args.layout
    print(f"{target.key}; {args.lowering}, {args.activation}, input and output {layout}, "
          f"best of {args.rounds} rounds x {args.calls} calls, microseconds")
    print(f"{'case':>24} {'old':>8} {'new':>8} {'new/old':>8}")
    for label, calls in (block_builds if args.lowering == "fused_block" else conv_builds)(args, target).items():
        best = dict.fromkeys(calls, float("inf"))
        for _ in range(args.rounds):
            for name, call in calls.items():
                for _ in range(args.calls // 10):
                    call()
                start = time.perf_counter()
                for _ in range(args.calls):
                    call()
                best[name] = min(best[name], (time.perf_counter() - start) / args.calls)
        print(f"{label:>24} {best['old'] * 1e6:8.2f} {best['new'] * 1e6:8.2f} {best['new'] / best['old']:8.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
