"""How the cores share a fused inverted-residual kernel (schedules/fused_block.py): bands of output rows, or
channel groups where the block ends before a projection (``default_groups``), timed alone and cold (each call
on another copy of its activations, as in a model), interleaved, the fastest of the rounds; one row per
distinct block of the model that the rule splits by channels.

    python benchmarks/fused_split.py timm:efficientnet_b0 [--out benchmarks/results/fused_split_efficientnet_b0.md]
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

warnings.simplefilter("ignore")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", help="timm:NAME")
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    import timm
    import torch

    from convopt.capture import capture_program
    from convopt.cost.calibrate import describe_block, time_interleaved
    from convopt.passes.fuse_blocks import match_blocks
    from convopt.pipeline import build, run_passes
    from convopt.schedules import fused_block, tiling
    from convopt.target import resolve_target

    target = resolve_target("cpu")
    lanes, cores = target.lanes, target.cores
    model = timm.create_model(args.model.removeprefix("timm:")).eval()
    graph = capture_program(model, torch.randn(1, 3, 224, 224)).graph
    graph, _ = run_passes(graph, build("inference", target, fuse_blocks=False, skip=["select_lowering", "block_layout"]))
    blocks = [b for b in match_blocks(graph, kinds=(fused_block.KIND, fused_block.PARTIAL_KIND))]
    seen, rows = set(), []
    for block in blocks:
        name = describe_block(block)
        groups = fused_block.default_groups(block, cores, lanes)
        if name in seen or groups == 1:
            continue
        seen.add(name)
        rng = np.random.default_rng(0)
        C, E, k = block.expand.in_channels, block.expand.out_channels, block.depthwise.kernel[0]
        weights = fused_block.prepare_weights(block, *(rng.standard_normal(s).astype(np.float32) for s in
                                                       ((E, C), (E,), (E, k, k), (E,))), lanes=lanes)
        in_block, out_block = fused_block.blocked_io(block, lanes)
        x_shape, out_shape = fused_block.io_shapes(block, lanes, in_block, out_block)
        inputs = [rng.standard_normal(x_shape).astype(np.float32), *weights]
        row_bands = max(1, min(block.depthwise.out_height, fused_block.cores_per_image(block, cores)))
        calls = {split: fused_block.compiled_alone(
            fused_block.prim_func(block, lanes, bands, in_block=in_block, out_block=out_block, groups=g),
            target, inputs, out_shape, cold=True) for split, bands, g in (("bands", row_bands, 1),
                                                                           ("groups", 1, groups))}
        times = time_interleaved(calls, rounds=args.rounds)
        d = block.depthwise
        rows_computed = sum(tiling.ring_band_rows(k, d.stride[0], d.out_height, block.expand.height,
                                                  block.pads[0], row_bands))
        rows.append((name, row_bands, rows_computed, block.expand.height, groups, times["bands"] * 1e6,
                     times["groups"] * 1e6))
        print(rows[-1], flush=True)
    lines = [f"# Fused block kernels: bands of rows or channel groups, {args.model}", "",
             f"Target {target.key}; `python benchmarks/fused_split.py {args.model}`; each kernel alone, cold "
             f"inputs, interleaved, fastest of {args.rounds} rounds.", "",
             "| block | bands | expand rows computed / map rows | channel groups | bands us | groups us | "
             "groups / bands |", "|---|---|---|---|---|---|---|"]
    for name, bands, computed, height, groups, t_bands, t_groups in rows:
        lines.append(f"| {name} | {bands} | {computed} / {height} | {groups} | {t_bands:.1f} | {t_groups:.1f} | "
                     f"{t_groups / t_bands:.3f} |")
    if rows:
        ratios = [r[6] / r[5] for r in rows]
        lines += ["", f"geomean groups / bands: {float(np.exp(np.mean(np.log(ratios)))):.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
