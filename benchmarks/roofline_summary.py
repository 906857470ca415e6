"""How far each model's kernels are from their roofline bound (`convopt report`, each model in its own
process): per model, the kernels timed, those above 2x their bound (max of FLOPs at the measured peak
and bytes at the measured bandwidth) and their share of the run, and the worst few.

    python benchmarks/roofline_summary.py [--models resnet18,...] [--out benchmarks/results/roofline_summary.md]
                                          [--peers benchmarks/results/compare_*.json ...] [--turns 3]

The floor is the sum of the kernels' bounds: the run if every kernel ran at its bound. It is a floor for
kernels that do the conv's own multiply-adds (direct, im2col, im2win, depthwise, GEMMs); Winograd does
fewer and can beat it, so for a model whose 3x3 convs run Winograd it is not one. With ``--peers`` (results of
benchmarks/compare.py on the same machine), the fastest peer per model beside it: a target such as "0.80x the
fastest peer" below the floor can't be met by faster kernels, only by less work.

With ``--out X.md`` every turn's report and the merged one go to X.json. VM builtins (allocation) have no bound
and are left out; kernels under 10 us a run are listed but not
counted (at that size the call itself, not the roofline, is the limit).

Why turns (``--turns N``: every model's report N times, the models in rotation, merged by
convopt.report.merge_reports: each kernel's lowest time, the highest bandwidth of all rounds): a neighbour's
slow phase lasts minutes, longer than one report's rounds. In one afternoon on the Zen 5 (2 cores) the same
summary said mobileone_s0 had 5 kernels above 2x their bound (its depthwise convs 4.0x and 5.5x), and
`convopt report timm:mobileone_s0` ten minutes later put the same kernels at 1.1x and 1.3x.

Why a process per model: in one process, after other models had run, convnext_atto's channel norms read
0.151 and 0.062 ms (2.8x and 3.1x their bound) in two summaries, while `convopt report timm:convnext_atto`
alone read them at 1.3x: each report here is `convopt report` as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from convopt.report import merge_reports

DEV_MODELS = ("resnet18", "resnet50", "repvgg_a0", "mobileone_s0", "mobilenetv2_100", "convnext_atto",
              "inception_next_atto", "efficientnet_b0")
MIN_SECONDS = 10e-6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(DEV_MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out")
    parser.add_argument("--peers", nargs="*", default=[], help="compare.py JSON results: the fastest peer per model")
    parser.add_argument("--turns", type=int, default=1, help="reports per model, the models in rotation (default 1)")
    parser.add_argument("--target-ratio", type=float, default=0.80, help="of the fastest peer (default 0.80)")
    parser.add_argument("--untuned", action="store_true", help="every kernel's default schedule (convopt report "
                                                              "--untuned): no tuning records")
    args = parser.parse_args()
    peers = fastest_peers(args.peers)
    lines = ["| model | run ms | floor ms | fastest peer ms | target ms | target / floor | kernels | tuned "
             "| above 2x bound | in each turn | their share | worst (x bound, ms) | highest within 2x (x bound, ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cpu = target = ""
    models = args.models.split(",")
    turns: dict[str, list[dict]] = {name: [] for name in models}
    for turn in range(max(1, args.turns)):
        for name in models:
            turns[name].append(report_alone(f"timm:{name}", args.runs, args.untuned))
            print(f"turn {turn + 1}: {name} {turns[name][-1]['run_ms']:.2f} ms", flush=True)
    merged = {}
    for name in models:
        result = merged[name] = merge_reports(turns[name])
        cpu, target = result["cpu"], result["target"]
        kernels = counted(result)
        slow = sorted((k for k in kernels if (k["x_bound"] or 0) > 2), key=lambda k: -k["seconds"])
        each_turn = "/".join(str(sum((k["x_bound"] or 0) > 2 for k in counted(r))) for r in turns[name])
        within = max((k for k in kernels if (k["x_bound"] or 0) <= 2), key=lambda k: k["x_bound"] or 0, default=None)
        highest = f"{within['name']} ({within['x_bound']:.2f}x, {within['ms']:.3f})" if within else "-"
        share = sum(k["share"] for k in slow)
        worst = ", ".join(f"{k['name']} ({k['x_bound']:.1f}x, {k['ms']:.3f})" for k in slow[:3]) or "-"
        floor = sum(k["bound_ms"] or 0.0 for k in result["kernels"] if k["kind"] != "builtin")
        peer = peers.get(f"timm:{name}")
        if peer:
            target_ms = args.target_ratio * peer[1]
            vs = f"{peer[1]:.2f} ({peer[0]}) | {target_ms:.2f} | {target_ms / floor:.2f}"
        else:
            vs = "- | - | -"
        tuned = sum(k.get("schedule") == "tuned" for k in result["kernels"])
        lines.append(f"| {name} | {result['run_ms']:.2f} | {floor:.2f} | {vs} | {len(kernels)} | {tuned} "
                     f"| {len(slow)} | {each_turn} | {share:.1%} | {worst} | {highest} |")
        print(lines[-1], flush=True)
    text = (f"Kernels against their roofline bound, {target} ({cpu}); `python benchmarks/roofline_summary.py"
            f"{' --peers ' + ' '.join(args.peers) if args.peers else ''}"
            f"{f' --turns {args.turns}' if args.turns > 1 else ''}{' --untuned' if args.untuned else ''}`; "
            f"{'untuned (every kernel its default schedule); ' if args.untuned else ''}"
            f"tuned: convopt's kernels a tuning record scheduled; kernels under {MIN_SECONDS * 1e6:.0f} us "
            f"a run and VM builtins not counted in the kernel columns; in each turn: above 2x in each "
            f"turn's report alone; floor: the sum of every kernel's bound; "
            f"target: {args.target_ratio:.2f}x the fastest peer.\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        # every turn's report and the merged one, for a later look at any kernel
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {name: {"merged": merged[name], "turns": turns[name]} for name in models}, indent=1))
    return 0


def counted(report: dict) -> list[dict]:
    """The kernels a summary counts: not VM builtins, at least ``MIN_SECONDS`` a run."""
    return [k for k in report["kernels"] if k["kind"] != "builtin" and k["seconds"] >= MIN_SECONDS]


def report_alone(model: str, runs: int, untuned: bool = False) -> dict:
    """report.json of `convopt report MODEL` (seed 0, 1x3x224x224; ``untuned``: with --untuned) run in a process of
    its own."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-c", "import sys; from convopt.cli import main; sys.exit(main())",
                        "report", model, "--seed", "0", "--runs", str(runs), "--out", folder,
                        *(["--untuned"] if untuned else [])],
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads((Path(folder) / "report.json").read_text())


def fastest_peers(paths) -> dict[str, tuple[str, float]]:
    """model -> (peer, ms): the fastest contender not named convopt* in benchmarks/compare.py's JSON results
    (the lowest over the files given, which should come from this machine)."""
    best: dict[str, tuple[str, float]] = {}
    for path in paths:
        for model, contenders in json.loads(Path(path).read_text())["results"].items():
            for peer, row in contenders.items():
                if not peer.startswith("convopt") and row.get("median_ms") and (
                        model not in best or row["median_ms"] < best[model][1]):
                    best[model] = (peer, row["median_ms"])
    return best


if __name__ == "__main__":
    sys.exit(main())
