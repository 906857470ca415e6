"""A 1x1 conv alone against the same conv right after the depthwise conv that writes its input, for both
orders of its parallel loop (tiling.rows_outermost: output rows or channel blocks outermost).

    python benchmarks/producer_consumer.py [--shapes 256x14,128x28] [--out benchmarks/results/producer_consumer.md]

In a model a kernel's input was just written by the kernel before it, partly by the other cores: a 1x1 conv
whose parallel loop runs over channel blocks reads all of that input on every core, one over output rows
only its rows. Timed alone, with the same input in its own cache, the two orders can't show that. Each shape
C x H is a depthwise 3x3 (C channels, H x H, blocked, ReLU) and a 1x1 C -> C (ReLU) reading its output
buffer; "after dw" is the pair's time minus the depthwise's alone. Fastest of 9 runs of 50 ms each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from convopt.schedules import tiling
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import build_kernel
from convopt.target import host_target


def _seconds(call, rounds: int = 9) -> float:
    call()
    best = float("inf")
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.05:
            call()
            count += 1
        best = min(best, (time.perf_counter() - start) / count)
    return best


def _kernel(name: str, spec: ConvSpec, target, rows_outermost: bool | None = None):
    rule = tiling.rows_outermost
    if rows_outermost is not None:  # the order under test, whatever the rule says for this shape
        tiling.rows_outermost = lambda *, weights, inputs, in_passes=False: rows_outermost
    try:
        weight = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel) * 0.1
        return build_kernel(name, spec, weight, torch.randn(spec.out_channels), target=target, activation="relu",
                            in_block=target.lanes, out_block=target.lanes)
    finally:
        tiling.rows_outermost = rule


def measure(channels: int, size: int, target) -> list[str]:
    depthwise = ConvSpec(1, channels, size, size, channels, (3, 3), (1, 1), (1, 1), groups=channels)
    pointwise = ConvSpec(1, channels, size, size, channels, (1, 1))
    producer = _kernel("depthwise", depthwise, target)
    produce_args = producer._args(torch.randn(1, channels, size, size), None)
    produce = lambda: producer._func(*produce_args)  # noqa: E731
    alone = _seconds(produce)
    # (the rule for a reduction in one pass: these shapes' tiles fit twice the L1)
    default = tiling.rows_outermost(weights=channels * channels, inputs=channels * size * size)
    rows = []
    for rows_outermost in (False, True):
        consumer = _kernel("direct", pointwise, target, rows_outermost)
        consume_args = [produce_args[-1], *consumer._constants, *consumer._bias, consumer._out]
        consume = lambda: consumer._func(*consume_args)  # noqa: E731
        pair = _seconds(lambda: (produce(), consume()))
        order = "rows" if rows_outermost else "channel blocks"
        rows.append(f"| {channels} ch @{size}x{size} | {order}{' (the rule)' if rows_outermost == default else ''} | "
                    f"{alone * 1e6:.1f} | {_seconds(consume) * 1e6:.1f} | {(pair - alone) * 1e6:.1f} | {pair * 1e6:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="256x14,128x28", help="CxH: depthwise C channels at HxH, then 1x1 C->C")
    parser.add_argument("--out")
    args = parser.parse_args()
    target = host_target()
    lines = ["| shape | 1x1 parallel loop outermost | depthwise alone us | 1x1 alone us | 1x1 after the depthwise us | pair us |",
             "|---|---|---|---|---|---|"]
    for shape in args.shapes.split(","):
        channels, size = (int(v) for v in shape.split("x"))
        lines += measure(channels, size, target)
    text = (f"`python benchmarks/producer_consumer.py --shapes {args.shapes}` ({target.key}; fastest of 9 runs)\n\n"
            + "\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
