"""Conv nodes left by convopt's merge_branches vs timm's own reparameterize_model, per model family.

    python benchmarks/reparam_counts.py [--models repvgg_a0,...]

Writes benchmarks/results/reparam_counts.md. Each row is also checked numerically (optimize's check:
relative error <= 1e-4 against eager).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

import convopt
from convopt.bench import markdown_table

FAMILIES = ("repvgg_a0,repvgg_b1g4,mobileone_s0,mobileone_s1,repvit_m0_9,fastvit_t8,repghostnet_050,ghostnetv3_050,"
            "resnet50,mobilenetv2_100")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=FAMILIES)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reparam_counts.md"))
    args = parser.parse_args()
    import timm
    from timm.utils.model import reparameterize_model

    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 224, 224)
        captured = convopt.capture(model, x).op_counts()
        fast = convopt.optimize(model, x)
        timm_count = convopt.capture(reparameterize_model(copy.deepcopy(model)), x).op_counts()["conv2d"]
        rows.append({"model": name, "convs captured": captured["conv2d"],
                     "batch_norm captured": captured.get("batch_norm", 0),
                     "convs after convopt": fast.graph.op_counts()["conv2d"],
                     "batch_norm after convopt": fast.graph.op_counts().get("batch_norm", 0),
                     "convs after timm reparameterize_model": timm_count})
        print(rows[-1], flush=True)
    table = markdown_table(rows, list(rows[0]))
    Path(args.out).write_text(f"`python benchmarks/reparam_counts.py` (every row passed optimize's check, "
                              f"relative error <= 1e-4 vs eager)\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
