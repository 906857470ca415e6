"""How far each model's kernels are from their roofline bound (`convopt report`, one model after another in
this process): per model, the kernels timed, those above 2x their bound (max of FLOPs at the measured peak
and bytes at the measured bandwidth) and their share of the run, and the worst few.

    python benchmarks/roofline_summary.py [--models resnet18,...] [--out benchmarks/results/roofline_summary.md]

VM builtins (allocation) have no bound and are left out; kernels under 10 us a run are listed but not
counted (at that size the call itself, not the roofline, is the limit).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

warnings.simplefilter("ignore")

DEV_MODELS = ("resnet18", "resnet50", "repvgg_a0", "mobileone_s0", "mobilenetv2_100", "convnext_atto",
              "inception_next_atto", "efficientnet_b0")
MIN_SECONDS = 10e-6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(DEV_MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    import timm

    import convopt
    from convopt.report import report

    lines = ["| model | run ms | kernels | above 2x bound | their share | worst (x bound, ms) |", "|---|---|---|---|---|---|"]
    cpu = target = ""
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, 3, 224, 224)
        result = report(convopt.optimize(model, x), x, runs=args.runs, model=f"timm:{name}")
        cpu, target = result["cpu"], result["target"]
        kernels = [k for k in result["kernels"] if k["kind"] != "builtin" and k["seconds"] >= MIN_SECONDS]
        slow = sorted((k for k in kernels if (k["x_bound"] or 0) > 2), key=lambda k: -k["seconds"])
        share = sum(k["share"] for k in slow)
        worst = ", ".join(f"{k['name']} ({k['x_bound']:.1f}x, {k['ms']:.3f})" for k in slow[:3]) or "-"
        lines.append(f"| {name} | {result['run_ms']:.2f} | {len(kernels)} | {len(slow)} | {share:.1%} | {worst} |")
        print(lines[-1], flush=True)
    text = (f"Kernels against their roofline bound, {target} ({cpu}); `python benchmarks/roofline_summary.py`; "
            f"kernels under {MIN_SECONDS * 1e6:.0f} us a run and VM builtins not counted.\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
