"""A/B of a module constant on single conv kernels: each case built as convopt builds it ("new") and with one or
more of convopt's module-level constants set otherwise ("old"), all compiled in this process and timed
interleaved (calibrate.time_interleaved: the fastest of ``--rounds`` rounds, each calling every kernel in a
rotating order), NCHW input (``--blocked-input``: blocked) and the output in the target's channel blocks
(NCHW where the channels don't fill whole blocks).

    python benchmarks/kernel_constant_ab.py --old convopt.schedules.signed_zero_init.NEGATIVE_ZERO=False \\
        direct:3,224,32,3,2 direct:16,112,96,1,1 im2win:64,56,64,3,1

A case is LOWERING:C,HW,O,K,S[,G]: C channels in on an HW x HW map, O out, a K x K kernel of stride S padded
K // 2, in G groups (default 1). Kernels of several cases timed in one run disturb each other's caches: time a case alone (and in both
build orders, ``--old-first``) before believing a few percent. The constant must be read at build time
(constant_ab.py says which are).
"""

from __future__ import annotations

import argparse

import torch

from constant_ab import _assignment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", metavar="LOWERING:C,HW,O,K,S[,G]")
    parser.add_argument("--old", action="append", required=True, metavar="MODULE.NAME=VALUE",
                        help="a constant's value for the old build (repeatable)")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--old-first", action="store_true", help="build (and time in each round) the old one first")
    parser.add_argument("--blocked-input", action="store_true",
                        help="the input in the target's channel blocks too (where the channels fill them)")
    args = parser.parse_args()

    from convopt.cost.calibrate import time_interleaved
    from convopt.schedules.conv_spec import ConvSpec
    from convopt.schedules.kernel import build_kernel
    from convopt.target import host_target

    target = host_target()
    target.configure_runtime()
    changes = [_assignment(text) for text in args.old]
    saved = [(module, name, getattr(module, name)) for module, name, _ in changes]

    def build(lowering, spec, w, b, old: bool):
        try:
            for module, name, value in changes if old else ():
                setattr(module, name, value)
            lanes = target.lanes
            return build_kernel(lowering, spec, w, b, target=target, activation=args.activation,
                                in_block=lanes if args.blocked_input else None,
                                out_block=lanes if args.blocked_input or spec.out_channels % lanes == 0 else None)
        finally:
            for module, name, value in saved:
                setattr(module, name, value)

    calls = {}
    for case in args.cases:
        lowering, _, shape = case.partition(":")
        c, hw, o, k, s, *groups = (int(v) for v in shape.split(","))
        g = groups[0] if groups else 1
        spec = ConvSpec(1, c, hw, hw, o, (k, k), (s, s), (k // 2, k // 2), groups=g)
        rng = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, hw, hw, generator=rng)
        w = torch.randn(o, c // g, k, k, generator=rng) / (c // g * k * k) ** 0.5
        b = torch.randn(o, generator=rng)
        for old in (True, False) if args.old_first else (False, True):
            calls[case, old] = build(lowering, spec, w, b, old).bound(x)
    seconds = time_interleaved(calls, rounds=args.rounds)
    print(f"{target.key}; {args.activation}; fastest of {args.rounds} interleaved rounds")
    for case in args.cases:
        new, old = seconds[case, False], seconds[case, True]
        print(f"{case:28s} new {new * 1e6:8.1f} us  old {old * 1e6:8.1f} us  new / old {new / old:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
