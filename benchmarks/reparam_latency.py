"""Latency of reparameterizable models: eager vs timm's reparameterize_model vs convopt's torch path.

    python benchmarks/reparam_latency.py [--models repvgg_a0,mobileone_s0] [--rounds 30]

All contenders run interleaved in one process with 2 threads, batch 1, 224x224, random weights.
Writes benchmarks/results/reparam_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import platform
from pathlib import Path

import torch

import convopt
from convopt.bench import markdown_table, summarize, write_report
from convopt.cost.calibrate import measure_interleaved
from convopt.optimize import relative_error


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="repvgg_a0,mobileone_s0")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reparam_latency"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    import timm
    from timm.utils.model import reparameterize_model

    rows, raw = [], {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, 3, 224, 224)
        reparam = reparameterize_model(copy.deepcopy(model))
        fast = convopt.optimize(model, x, target="torch")
        with torch.no_grad():
            err = relative_error(fast(x), model(x))
            contenders = {"eager": lambda: model(x), "timm_reparam": lambda: reparam(x), "convopt_torch": lambda: fast(x)}
            times = measure_interleaved(contenders, rounds=args.rounds)
        summary = summarize(times, "eager")
        raw[name] = {"summary": summary, "relative_error_convopt": err,
                     "convs": {"eager": convopt.capture(model, x).op_counts()["conv2d"],
                               "convopt": fast.graph.op_counts()["conv2d"]}}
        row = {"model": name, "rel. error": err}
        for contender, s in summary.items():
            row[f"{contender} ms"] = s["median_ms"]
        row["convopt / timm_reparam"] = summary["convopt_torch"]["median_ms"] / summary["timm_reparam"]["median_ms"]
        rows.append(row)
        print(name, {k: round(v["median_ms"], 2) for k, v in summary.items()}, f"rel.err {err:.2g}")
    columns = ["model", "eager ms", "timm_reparam ms", "convopt_torch ms", "convopt / timm_reparam", "rel. error"]
    table = markdown_table(rows, columns)
    meta = {"command": "python benchmarks/reparam_latency.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                        if k != "out"),
            "threads": 2, "batch": 1, "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__}
    write_report(args.out, meta["command"], f"medians of {args.rounds} interleaved rounds", table,
                 {"meta": meta, "results": raw})
    print(table)


if __name__ == "__main__":
    main()
