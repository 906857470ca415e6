"""Block fusion, block by block: each inverted residual block of a model run fused (one kernel,
schedules/fused_block.py) and unfused (convopt's three conv kernels with their epilogues), both compiled by
convopt from the same single-block module and timed interleaved in this process (time_interleaved: best of
rounds), beside the cost model's predictions (cost/fused.py) and the bytes each moves from memory.

    python benchmarks/block_fusion.py mobilenetv2_100 [--out benchmarks/results/block_fusion_mobilenetv2_100.md]

Bytes: unfused, the three convs' input, weights and output (cost/formulas.py terms, so both intermediates
are written and read once); fused, the block's input, weights and output (intermediates stay in cache), and
its halo overhead: the expand conv's extra FLOPs for the rows each band recomputes.
End to end, each contender alone in its own process:

    convopt bench timm:mobilenetv2_100 --vs convopt-unfused,ort-reparam,openvino-reparam,inductor
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

warnings.simplefilter("ignore")


class Block(nn.Module):
    """One inverted residual block with given weights (taken from the model's graph)."""

    def __init__(self, block, weights):
        super().__init__()
        e, d, p = block.expand, block.depthwise, block.project
        self.expand = nn.Conv2d(e.in_channels, e.out_channels, 1)
        self.dw = nn.Conv2d(d.in_channels, d.out_channels, d.kernel, d.stride, d.padding, groups=d.groups)
        self.project = nn.Conv2d(p.in_channels, p.out_channels, 1) if p is not None else None
        for conv, (w, b) in zip((self.expand, self.dw, self.project), weights):
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b if b is not None else torch.zeros(conv.out_channels))
        self.acts = block.activations
        self.residual = block.residual

    @staticmethod
    def _act(name, x):
        return {"relu": torch.relu, "relu6": lambda v: v.clamp(0, 6), "silu": nn.functional.silu,
                "hardswish": nn.functional.hardswish, "gelu": nn.functional.gelu}[name](x)

    def forward(self, x):
        y = self._act(self.acts[1], self.dw(self._act(self.acts[0], self.expand(x))))
        if self.project is None:  # the part before a squeeze-excite
            return y
        y = self.project(y)
        return y + x if self.residual else y


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out")
    args = parser.parse_args()
    import timm

    import convopt
    from convopt.capture import capture_program
    from convopt.cost.calibrate import time_interleaved
    from convopt.cost.formulas import evaluate
    from convopt.cost.fused import fused_terms, predict_block
    from convopt.cost.profile import load_profile
    from convopt.passes.fuse_blocks import match_blocks
    from convopt.pipeline import build, run_passes
    from convopt.schedules.fused_block import default_bands
    from convopt.target import resolve_target

    target = resolve_target("cpu")
    profile = load_profile(target)
    model = timm.create_model(args.model).eval()
    graph = capture_program(model, torch.randn(1, 3, 224, 224)).graph
    graph, _ = run_passes(graph, build("inference", target, fuse_blocks=False, skip=["select_lowering", "block_layout"]))
    consts = graph.constant_map
    rows, seen = [], set()
    for block in match_blocks(graph):
        key = (block.expand, block.depthwise, block.project, block.activations, block.residual)
        if key in seen:
            continue
        seen.add(key)
        weights = [(consts[n.inputs[1]].data, consts[n.inputs[2]].data if len(n.inputs) > 2 and n.inputs[2] else None)
                   for n in block.nodes[0:5:2]]
        module = Block(block, weights).eval()
        x = torch.randn(block.expand.batch, block.expand.in_channels, block.expand.height, block.expand.width)
        fused = convopt.optimize(module, x, tuning_logs=False, fuse_blocks={"expand": True})
        unfused = convopt.optimize(module, x, tuning_logs=False, fuse_blocks=False)
        with torch.no_grad():
            times = time_interleaved({"fused": lambda: fused(x), "unfused": lambda: unfused(x)}, rounds=9)
        predicted = predict_block(block, profile, target.lanes)
        specs = [spec for spec in (block.expand, block.depthwise, block.project) if spec is not None]
        unfused_bytes = sum(evaluate("direct", spec, target.lanes)["bytes"] for spec in specs)
        terms = fused_terms(block, target.lanes, target.cores)
        halo = (terms["flops"] - 2 * sum(spec.macs for spec in specs)) / (2 * block.expand.macs)
        e, d = block.expand, block.depthwise
        end = f"->{block.project.out_channels}" if block.project is not None else " (to the SE)"
        rows.append((f"{e.in_channels}->{e.out_channels}{end} k{d.kernel[0]} s{d.stride[0]} "
                     f"@{e.height}{' +x' if block.residual else ''}", times["unfused"], times["fused"],
                     predicted, unfused_bytes, terms["bytes"], halo, default_bands(block, target.cores)))
        print(rows[-1], flush=True)
    cpu = platform.processor() or "cpu"
    lines = [f"# Block fusion, block by block: {args.model}", "",
             f"Target {target.key} ({profile.cpu}); `python benchmarks/block_fusion.py {args.model}`; both variants "
             "compiled by convopt from the same one-block module, untuned, timed interleaved in one process "
             "(best of 9 rounds). Predicted: cost/fused.py (fused) and cost/model.py (unfused).", "",
             "| block | unfused us | fused us | unfused / fused | predicted unfused / fused us | unfused MB | "
             "fused MB | extra FLOPs (rows recomputed, padded channels) per expand FLOP | bands |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t_unfused, t_fused, predicted, b_unfused, b_fused, halo, th in rows:
        pred = "-" if predicted is None else f"{predicted[1] * 1e6:.0f} / {predicted[0] * 1e6:.0f}"
        lines.append(f"| {name} | {t_unfused * 1e6:.0f} | {t_fused * 1e6:.0f} | {t_unfused / t_fused:.2f} | {pred} | "
                     f"{b_unfused / 1e6:.2f} | {b_fused / 1e6:.2f} | {halo:.0%} | {th} |")
    total_u, total_f = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines += ["", f"Sum over the distinct blocks: unfused {total_u * 1e6:.0f} us, fused {total_f * 1e6:.0f} us "
              f"({total_u / total_f:.2f}x); {cpu}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
