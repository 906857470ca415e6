"""Block fusion, block by block, inside the model: the model compiled with every block fuse_blocks matches fused
(one kernel each: schedules/fused_block.py for inverted residuals, schedules/fused_mlp.py for pointwise MLPs
and ConvNeXt blocks,
schedules/fused_chain.py for dense conv pairs and bottlenecks)
and with none (convopt's kernels of each block's nodes, each call counted, exchanging
channel-blocked tensors), each kernel timed in place by the VM's instrument (report.time_kernels, the
lowest of its round medians), so a block's neighbours, layouts and cache state are the model's. Beside them: the cost
model's predictions (cost/fused.py, cost/model.py), the bytes each variant moves from memory, and the
fused kernel's extra FLOPs (rows computed twice, channels padded to whole vectors). Then the whole model
with the cost model's choice, all blocks fused and none, timed interleaved in this process (best of rounds).

    python benchmarks/block_fusion.py mobilenetv2_100 [--out benchmarks/results/block_fusion_mobilenetv2_100.md]

Timing a block alone instead (a one-block module) favours fusion: the unfused convs then read and write NCHW
at the module's edges, which in a model they don't. End to end, each contender alone in its own process:

    convopt bench timm:mobilenetv2_100 --vs convopt-unfused,ort-reparam,openvino-reparam,inductor
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

warnings.simplefilter("ignore")


def per_call(rows) -> dict[str, tuple[int, float]]:
    """IR node -> (the kernel that runs it, seconds of one call of that kernel)."""
    return {node: (i, row.seconds / row.calls) for i, row in enumerate(rows) for node in row.nodes}


def kernels_time(per_node: dict[str, tuple[int, float]], nodes) -> float:
    """Seconds of the kernel calls that run ``nodes``: a kernel's table lists one node per call (the conv
    whose call it is; what its epilogue absorbed is not listed), so equal convs sharing one kernel function
    (a block's two 48->48 1x1s) count once each."""
    return sum(per_node[n][1] for n in nodes if n in per_node)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    import timm

    import convopt
    from convopt.capture import capture_program
    from convopt.cost.calibrate import describe_block, time_interleaved
    from convopt.cost.formulas import evaluate
    from convopt.cost.fused import block_terms, fusion_margin, predict_block
    from convopt.cost.profile import load_profile
    from convopt.ir import Op
    from convopt.passes.fuse_blocks import match_blocks
    from convopt.pipeline import build, run_passes
    from convopt.report import time_kernels
    from convopt.schedules import fused_block, fused_chain, fused_mlp
    from convopt.schedules.fused_block import PARTIAL_KIND
    from convopt.target import resolve_target

    target = resolve_target("cpu")
    profile = load_profile(target)
    model = timm.create_model(args.model).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = capture_program(model, x).graph
    graph, _ = run_passes(graph, build("inference", target, fuse_blocks=False, skip=["select_lowering", "block_layout"]))
    blocks = match_blocks(graph)
    every = {block.nodes[0].name: True for block in blocks}
    variants = {"cost model": convopt.optimize(model, x), "all fused": convopt.optimize(model, x, fuse_blocks=every),
                "unfused": convopt.optimize(model, x, fuse_blocks=False)}
    fused_times, _ = time_kernels(variants["all fused"], x, runs=args.runs)
    unfused_times, _ = time_kernels(variants["unfused"], x, runs=args.runs)
    fused_at = {n.attrs.body[0].name: n.name for n in variants["all fused"].graph.nodes if n.op is Op.FUSED_BLOCK}
    fused_s, unfused_s = per_call(fused_times), per_call(unfused_times)
    chosen = {n.attrs.body[0].name for n in variants["cost model"].graph.nodes if n.op is Op.FUSED_BLOCK}

    rows = []
    for block in blocks:
        first = block.nodes[0].name
        measured_fused = fused_s[fused_at[first]][1]
        measured_unfused = kernels_time(unfused_s, [n.name for n in block.nodes])
        predicted = predict_block(block, profile, target.lanes)
        specs = block.convs
        unfused_bytes = sum(evaluate("direct", spec, target.lanes)["bytes"] for spec in specs)
        terms = block_terms(block, target.lanes, profile)
        extra = (terms["flops"] - 2 * sum(spec.macs for spec in specs)) / (2 * specs[0].macs)
        end = "" if block.kind != PARTIAL_KIND else " (to the SE)"
        skip = " +x" if block.kind == fused_block.KIND else " +skip"  # an inverted residual adds its input
        name = f"{describe_block(block)}{end}" + (skip if block.residual else "")
        kernel = {fused_mlp.KIND: fused_mlp, fused_mlp.MIXER_KIND: fused_mlp,
                  **dict.fromkeys(fused_chain.KINDS, fused_chain)}.get(block.kind, fused_block)
        bands = (fused_block.default_bands(block, target.cores, target.lanes) if kernel is fused_block
                 else kernel.default_bands(block, target.cores))
        rows.append((name, measured_unfused, measured_fused, predicted, unfused_bytes, terms["bytes"], extra,
                     bands, first in chosen))
        print(rows[-1], flush=True)
    with torch.no_grad():
        whole = time_interleaved({k: (lambda f=f: f(x)) for k, f in variants.items()}, rounds=25)

    lines = [f"# Block fusion, block by block: {args.model}", "",
             f"Target {target.key} ({profile.cpu}); `python benchmarks/block_fusion.py {args.model}`; untuned. "
             "Each kernel timed inside the model (the VM's instrument, median of "
             f"{args.runs} runs): fused, the block's kernel with every block fused; unfused, its conv "
             "kernels with none. Predicted: cost/fused.py and cost/model.py; the cost model fuses where "
             "predicted fused x its kind's margin < predicted unfused (" + ", ".join(sorted(
                 {f"{b.kind} {fusion_margin(b):.3g}" for b in blocks})) + ").", "",
             "| block | unfused us | fused us | unfused / fused | predicted unfused / fused us | fused by the "
             "cost model | unfused MB | fused MB | extra FLOPs per first-conv FLOP | bands |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t_unfused, t_fused, predicted, b_unfused, b_fused, extra, bands, fused in rows:
        pred = "-" if predicted is None else f"{predicted[1] * 1e6:.0f} / {predicted[0] * 1e6:.0f}"
        lines.append(f"| {name} | {t_unfused * 1e6:.0f} | {t_fused * 1e6:.0f} | {t_unfused / t_fused:.2f} | {pred} | "
                     f"{'yes' if fused else 'no'} | {b_unfused / 1e6:.2f} | {b_fused / 1e6:.2f} | {extra:.0%} | "
                     f"{bands} |")
    lines += ["", "Whole model, interleaved in one process, best of 25 rounds: " + ", ".join(
        f"{k} {v * 1e3:.2f} ms" for k, v in whole.items()) + f" (unfused / cost model "
              f"{whole['unfused'] / whole['cost model']:.2f}x)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
