"""The plot of docs/block_fusion.md: per block, the fused kernel's speedup over its three unfused kernels
measured inside the model (the tables benchmarks/block_fusion.py writes), coloured by the cost model's
decision, against the speedup the cost model predicted.

    python benchmarks/plot_block_fusion.py benchmarks/results/block_fusion_*.md --out docs/block_fusion.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def read_table(path: Path) -> list[dict]:
    """The rows of a block_fusion results table: block, measured and predicted speedups, the decision."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[1].replace(".", "").isdigit():
            continue
        predicted_unfused, predicted_fused = (float(v) for v in cells[4].split("/"))
        rows.append({"block": cells[0], "measured": float(cells[3]), "predicted": predicted_unfused / predicted_fused,
                     "fused": cells[5] == "yes"})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("tables", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/block_fusion.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {path.stem.removeprefix("block_fusion_"): read_table(path) for path in args.tables}
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 5.5), squeeze=False)
    for ax, (model, rows) in zip(axes[0], tables.items()):
        seen, labels, measured, predicted, colours = set(), [], [], [], []
        for row in rows:  # repeated blocks once
            if row["block"] in seen:
                continue
            seen.add(row["block"])
            labels.append(row["block"])
            measured.append(row["measured"])
            predicted.append(row["predicted"])
            colours.append("tab:green" if row["fused"] else "tab:gray")
        y = range(len(labels))
        ax.barh(y, measured, color=colours, label="measured in the model (green: the cost model fuses it)")
        ax.scatter(predicted, y, color="black", marker="x", zorder=3, label="predicted (cost model)")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("unfused time / fused time")
        ax.set_title(model)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
