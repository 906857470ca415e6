"""convopt against its peers on whole models: latency, each contender alone in its own process, output checked.

    python benchmarks/compare.py [--models resnet18,...] [--vs eager,inductor,ort,ort-reparam,openvino-reparam]
                                 [--seconds 4] [--processes 2] [--out benchmarks/results/compare]
    python benchmarks/compare.py --merge RUN1.json,RUN2.json --out OUT   (runs pooled: more processes each)
    convopt bench timm:resnet50 --vs eager,ort          (the same for one model)

For each model, each contender is built in a fresh process, its output checked against eager by
relative error, then called back to back for ``--seconds`` with 2 threads; the reported time is the
lowest of ``--processes`` per-process medians (see convopt/bench.py for why). Writes OUT.{json,md}: ms
per contender, convopt / peer ratios per model and their geometric means over the models.

On a shared machine a whole run can be slowed by a neighbour; ``--merge`` pools the per-process medians of
earlier runs' JSON files (the same contenders) and reports the lowest per model and contender, as if each
had run in all of those processes, listing the runs it read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from convopt.bench import (compare_model, entry_keys, geomean, machine_description, markdown_table,
                           self_check_warnings, time_ratios, write_report)
from convopt.models import parse_shape

DEV_MODELS = "resnet18,resnet50,repvgg_a0,mobileone_s0,mobilenetv2_100,convnext_atto,inception_next_atto,efficientnet_b0"


def table_rows(results: dict[str, dict[str, dict]], keys: list[str]) -> list[dict]:
    """One row per model: ms (or the error) per contender and ``base / peer`` time ratios."""
    base, rows = keys[0], []
    for spec, entries in results.items():
        row = {"model": spec}
        for key in keys:
            row[f"{key} ms"] = entries[key].get("median_ms", entries[key].get("error", "-")[:40])
        row.update({f"{base} / {key}": ratio for key, ratio in time_ratios(entries, base).items()})
        rows.append(row)
    return rows


def geomean_line(results: dict[str, dict[str, dict]], keys: list[str]) -> str:
    """``base / peer`` geometric means over the models where both ran (the count when not all did)."""
    base, parts = keys[0], []
    for key in keys[1:]:
        ratios = [r[key] for r in (time_ratios(entries, base) for entries in results.values()) if key in r]
        if ratios:
            counted = "" if len(ratios) == len(results) else f" ({len(ratios)} of {len(results)} models)"
            parts.append(f"{key} {geomean(ratios):.3f}{counted}")
    # the target of issue 10 is stated against the faster peer of each model
    fastest = []
    for entries in results.values():
        ratios = time_ratios(entries, base)  # the faster peer is the one base's time is the largest share of
        peers = [ratios[k] for k in keys[1:] if k in ratios]
        if len(peers) > 1:
            fastest.append(max(peers))
    if fastest and len(fastest) == len(results):
        parts.append(f"the faster peer of each model {geomean(fastest):.3f}")
    return f"Geometric means of {base} / peer over the models: " + ", ".join(parts) + "."


def merge_runs(paths: list[str]) -> tuple[dict[str, dict[str, dict]], int]:
    """(results pooled over the runs: each entry's median is the lowest of all its process medians, and the
    turns of runs in turns are pooled; the fewest processes any pooled entry had)."""
    pooled: dict[str, dict[str, dict]] = {}
    for path in paths:
        for spec, entries in json.loads(Path(path).read_text())["results"].items():
            for key, entry in entries.items():
                into = pooled.setdefault(spec, {}).setdefault(key, dict(entry, process_medians_ms=[], turn_medians_ms=[]))
                into["process_medians_ms"] = into["process_medians_ms"] + entry.get("process_medians_ms", [])
                # runs in turns: their turns pooled (each run's contenders took the same number of turns)
                into["turn_medians_ms"] = into["turn_medians_ms"] + entry.get("turn_medians_ms", [])
                if "median_ms" in entry:
                    into["median_ms"] = min(into.get("median_ms", float("inf")), entry["median_ms"])
    fewest = min((len(e["process_medians_ms"]) for entries in pooled.values() for e in entries.values()), default=0)
    return pooled, fewest


def merged_settings(paths: list[str]) -> dict:
    """The settings the pooled runs were measured with (their meta): the shortest seconds of calls, and the
    input shape where every run recorded the same one."""
    metas = [json.loads(Path(path).read_text()).get("meta", {}) for path in paths]
    seconds = [m["seconds"] for m in metas if "seconds" in m]
    # runs before the meta kept the shape: from their command line
    shapes = {m.get("input_shape") or next(iter(re.findall(r"--input-shape (\S+)", m.get("command", ""))), None)
              for m in metas}
    return {"seconds": min(seconds) if seconds else None,
            "input_shape": shapes.pop() if len(shapes) == 1 and None not in shapes else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEV_MODELS, help="comma-separated timm names or model specs")
    parser.add_argument("--vs", default="eager,inductor,ort,ort-reparam,openvino-reparam", help="peers to measure")
    parser.add_argument("--convopt", default="convopt", help="convopt contender(s), e.g. convopt,convopt-torch")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of timed calls per process")
    parser.add_argument("--processes", type=int, default=2, help="processes per contender (the fastest counts)")
    parser.add_argument("--turns", type=int, default=0,
                        help="N: one process per contender, all built first, then N interleaved turns each "
                             "(--seconds / N of calls a turn; convopt/bench.py); 0: processes one after another")
    parser.add_argument("--input-shape", default="1,3,224,224", help="the example input of every model")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compare"))
    parser.add_argument("--merge", help="comma-separated JSON files of earlier runs to pool instead of measuring")
    args = parser.parse_args(argv)
    contenders = [c for c in args.convopt.split(",") + args.vs.split(",") if c]
    keys = entry_keys(contenders)
    results, warnings = {}, []
    if args.merge:
        results, fewest = merge_runs(args.merge.split(","))
        keys = [k for k in keys if all(k in entries for entries in results.values())]
    for name in [] if args.merge else args.models.split(","):
        spec = name if ":" in name else f"timm:{name}"
        results[spec] = compare_model(spec, contenders, args.seconds, args.processes, parse_shape(args.input_shape),
                                      progress=lambda line: print(line, file=sys.stderr, flush=True), turns=args.turns)
        warnings += [f"{spec}: {w}" for w in self_check_warnings(results[spec])]
        print(spec, json.dumps(results[spec]), flush=True)
    columns = ["model"] + [f"{k} ms" for k in keys] + [f"{keys[0]} / {k}" for k in keys[1:]]
    table = "\n\n".join([markdown_table(table_rows(results, keys), columns), geomean_line(results, keys), *warnings])
    seconds, input_shape = args.seconds, args.input_shape
    if args.merge:  # the runs' own settings: the parser's defaults describe nothing that was measured
        command = f"python benchmarks/compare.py --merge {args.merge}"
        settings = merged_settings(args.merge.split(","))
        seconds = settings["seconds"] or seconds
        input_shape = settings["input_shape"] or "as in the pooled runs"
    else:
        command = "python benchmarks/compare.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None)
    processes = fewest if args.merge else 1 if args.turns else args.processes
    meta = {"command": command, "machine": machine_description(), "batch": 1, "input_shape": input_shape,
            "torch": torch.__version__, "seconds": seconds, "processes": processes, "turns": args.turns}
    pooled = f" (runs pooled: {args.merge})" if args.merge else ""
    in_turns = all(e.get("turn_medians_ms") for entries in results.values() for e in entries.values()
                   if "median_ms" in e) and bool(results)
    if args.turns and not args.merge:
        method = (f"each contender in its own process, the processes given the cores in turns ({args.turns} turns "
                  f"each, interleaved, {seconds / args.turns:.2g} s of calls a turn); ms: the median of all calls; "
                  f"ratios: the geometric mean over the turns of the turn medians' ratios")
    elif args.merge and in_turns:
        method = (f"runs in turns pooled ({args.merge}): ms: the lowest of the runs' medians; ratios: the geometric "
                  f"mean over all their turns of the turn medians' ratios")
    else:
        method = (f"each contender alone in its own process, lowest of at least {processes} per-process medians "
                  f"over {seconds:g} s of calls{pooled}")
    caption = f"{machine_description()}; input {input_shape}; {method}; ratio < 1 means {keys[0]} is faster"
    write_report(args.out, command, caption, table, {"meta": meta, "results": results})
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
