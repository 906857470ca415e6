"""What a model's smooth activations cost, kernel by kernel: the timm model built twice, once as it is and once
with ``act_layer`` swapped for ReLU (the same convs, a max instead of SiLU's rational evaluation), both compiled
by convopt and timed kernel by kernel in one process, alternating (convopt.report.time_kernels, the fastest
of the rounds per kernel).

    python benchmarks/activation_share.py timm:efficientnet_b0 [--rounds 2] [--top 16] [--out FILE.md]

A roofline bound counts a conv's FLOPs and bytes, not its epilogue's arithmetic: SiLU costs ~15 vector
operations an element (schedules/activations.py), as many as the 1x1 conv's FMAs per output element where
its input has only 16-24 channels. The ratio column says how much of each kernel is the activation.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

import convopt
from convopt.report import time_kernels
from convopt.target import host_target


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", help="timm:NAME of a model that takes act_layer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--out")
    args = parser.parse_args()
    import timm

    warnings.simplefilter("ignore")
    name = args.model.removeprefix("timm:")
    x = torch.randn(1, 3, 224, 224)
    builds = {}
    for label, act in (("as is", None), ("relu", nn.ReLU)):
        torch.manual_seed(0)
        model = timm.create_model(name, **({"act_layer": act} if act else {})).eval()
        builds[label] = convopt.optimize(model, (x,))
    per_call: dict[str, dict[str, float]] = {label: {} for label in builds}
    plain: dict[str, float] = {}
    for _ in range(args.rounds):
        for label, fast in builds.items():
            rows, seconds = time_kernels(fast, (x,))
            plain[label] = min(plain.get(label, seconds), seconds)
            for r in rows:
                if r.kind != "builtin":
                    best = per_call[label].get(r.name, float("inf"))
                    per_call[label][r.name] = min(best, r.seconds / r.calls)
    common = sorted((k for k in per_call["as is"] if k in per_call["relu"]), key=lambda k: -per_call["as is"][k])
    lines = [f"`python benchmarks/activation_share.py {args.model} --rounds {args.rounds}` ({host_target().key}; "
             f"whole model {plain['as is'] * 1e3:.2f} ms as is, {plain['relu'] * 1e3:.2f} ms with ReLU)", "",
             "| kernel | as is us | with ReLU us | ratio |", "|---|---|---|---|"]
    for k in common[:args.top]:
        a, r = per_call["as is"][k] * 1e6, per_call["relu"][k] * 1e6
        lines.append(f"| {k} | {a:.1f} | {r:.1f} | {a / r:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
