"""convopt against its peers on whole models: latency, interleaved in one process, with output checks.

    python benchmarks/compare.py [--models resnet18,...] [--vs eager,inductor,ort,ort-reparam] [--rounds 20]
    convopt bench timm:resnet50 --vs eager,ort          (the same for one model)

For each model every contender is prepared (compiled) first, its output checked against eager by
relative error, then all are timed in rotating order (A B C, B C A, ...) with 2 threads each.
Writes benchmarks/results/compare.{json,md}: median ms per contender and ratios against convopt.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from convopt.bench import compare_model, markdown_table, write_report
from convopt.models import parse_shape

DEV_MODELS = "resnet18,resnet50,repvgg_a0,mobileone_s0,mobilenetv2_100,convnext_atto,inception_next_atto,efficientnet_b0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEV_MODELS, help="comma-separated timm names or model specs")
    parser.add_argument("--vs", default="eager,inductor,ort,ort-reparam", help="peers to measure")
    parser.add_argument("--convopt", default="convopt", help="convopt contender(s), e.g. convopt,convopt-torch")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--input-shape", default="1,3,224,224", help="the example input of every model")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compare"))
    args = parser.parse_args(argv)
    contenders = [c for c in args.convopt.split(",") + args.vs.split(",") if c]
    results = {}
    for name in args.models.split(","):
        spec = name if ":" in name else f"timm:{name}"
        results[spec] = compare_model(spec, contenders, args.rounds, args.warmup, parse_shape(args.input_shape))
        print(spec, json.dumps(results[spec]), flush=True)
    base = contenders[0]
    rows = []
    for spec, info in results.items():
        row = {"model": spec}
        for c in contenders:
            if "median_ms" in info.get(c, {}):
                row[f"{c} ms"] = info[c]["median_ms"]
                if c != base and "median_ms" in info.get(base, {}):
                    row[f"{base} / {c}"] = info[base]["median_ms"] / info[c]["median_ms"]
            else:
                row[f"{c} ms"] = info.get(c, {}).get("error", "-")[:40]
        rows.append(row)
    columns = ["model"] + [f"{c} ms" for c in contenders] + [f"{base} / {c}" for c in contenders[1:]]
    table = markdown_table(rows, columns)
    command = "python benchmarks/compare.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")
    meta = {"command": command, "threads": 2, "batch": 1, "torch": torch.__version__,
            "machine": platform.machine()}
    write_report(args.out, command, f"medians of {args.rounds} interleaved rounds, 2 threads, input {args.input_shape}; "
                 "ratio < 1 means convopt is faster", table, {"meta": meta, "results": results})
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
