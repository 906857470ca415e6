"""A/B of conv lowering choices inside one model: the model as optimize() builds it ("new") against the same
model with other choices ("old"), both compiled in this process and timed in alternating rounds (medians of
``--runs`` calls each), so a slow phase of the shared machine hits both alike.

    python benchmarks/lowering_ab.py timm:repvgg_a0 --old-stream-bandwidth 0     # the choices before session 35
    python benchmarks/lowering_ab.py timm:resnet18 --input-shape 1,3,128,128 --old-stream-bandwidth 0
    python benchmarks/lowering_ab.py timm:repvgg_a0 --old-lowering conv2d_8=winograd4 --old-lowering ...
    python benchmarks/lowering_ab.py timm:resnet18 --old-logs /tmp/old/tuning_logs     # records of another commit
    python benchmarks/lowering_ab.py timm:resnet18 --old-profile /tmp/old.json --untuned   # a recalibration

"old" is made by one of: ``--old-stream-bandwidth GBPS`` (the cost model's choice with that rate of weight
streaming, cost/weight_stream.py; 0: none measured, a copy's bandwidth, as before the rate was measured), or
``--old-lowering NODE=NAME`` (repeatable; forced on those nodes), or ``--old-logs DIR`` (the tuning records and
lowering times of DIR instead of every folder optimize() reads: e.g. ``git worktree add /tmp/old HEAD~1`` and
its tuning_logs), or ``--old-profile FILE`` (that profile as the one shipped for this machine's target key: e.g.
``git show HEAD~1:convopt/cost/profiles/<key>.json``, to weigh a recalibration). ``--untuned``: both builds
without tuning records (the cost model alone decides). Prints the nodes whose lowering differs and the
lowest and median round of each build, with new / old.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch

from convopt.report import median_seconds

warnings.simplefilter("ignore")



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--old-stream-bandwidth", type=float, help="GB/s (0: the copy bandwidth)")
    parser.add_argument("--old-lowering", action="append", default=[], metavar="NODE=NAME")
    parser.add_argument("--old-logs", metavar="DIR", help="tuning records read by the old build instead")
    parser.add_argument("--old-profile", metavar="FILE", help="the cost-model profile the old build uses instead")
    parser.add_argument("--untuned", action="store_true", help="no tuning records in either build")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if sum((args.old_stream_bandwidth is not None, bool(args.old_lowering), bool(args.old_logs),
            bool(args.old_profile))) != 1:
        parser.error("give one of --old-stream-bandwidth, --old-lowering, --old-logs, --old-profile")
    if args.untuned and args.old_logs:
        parser.error("--untuned builds without tuning records: --old-logs compares records")

    import convopt
    import convopt.cost.profile as profile
    from convopt.bench_worker import reference
    from convopt.models import parse_shape

    torch.set_num_threads(2)
    model, x = reference(args.model, parse_shape(args.input_shape), 0)
    options = {"tuning_logs": False} if args.untuned else {}
    new = convopt.optimize(model, x, **options)
    if args.old_lowering:
        old = convopt.optimize(model, x, lowering=dict(item.split("=", 1) for item in args.old_lowering), **options)
    elif args.old_profile:
        shipped = profile.shipped_profiles
        text = Path(args.old_profile).read_text()

        def with_old():
            profiles = shipped()
            old_profile = profile.MachineProfile.from_json(text, args.old_profile)
            return {**profiles, old_profile.target_key: old_profile}

        profile.shipped_profiles = with_old
        try:
            old = convopt.optimize(model, x, **options)
        finally:
            profile.shipped_profiles = shipped
    elif args.old_logs:
        import convopt.tuning.apply as apply

        folders = apply.default_log_dirs
        apply.default_log_dirs = lambda tuning_logs=None: [Path(args.old_logs)]
        try:
            old = convopt.optimize(model, x)
        finally:
            apply.default_log_dirs = folders
    else:
        measured = profile._stream_bandwidth
        profile._stream_bandwidth = lambda cached, shipped, target: args.old_stream_bandwidth * 1e9
        try:
            old = convopt.optimize(model, x, **options)
        finally:
            profile._stream_bandwidth = measured
    lowerings = [{n.name: n.attrs.lowering for n in fast.graph.nodes if getattr(n.attrs, "lowering", None)}
                 for fast in (old, new)]
    changed = [(name, was, lowerings[1].get(name)) for name, was in lowerings[0].items() if was != lowerings[1].get(name)]
    print(f"{args.model} {args.input_shape}: {len(changed)} convs' lowerings differ (node: old -> new): "
          + ", ".join(f"{name}: {was} -> {now}" for name, was, now in changed))
    rounds: dict[str, list[float]] = {"old": [], "new": []}
    with torch.no_grad():
        for _ in range(args.rounds):
            for key, fast in (("old", old), ("new", new)):
                median_seconds(lambda: fast(x), 3)  # the other build's pools and caches settle
                rounds[key].append(median_seconds(lambda: fast(x), args.runs) * 1e3)
    lowest = {key: min(v) for key, v in rounds.items()}
    median = {key: statistics.median(v) for key, v in rounds.items()}
    print(f"old {lowest['old']:.3f} ms (median round {median['old']:.3f}), new {lowest['new']:.3f} ms "
          f"(median round {median['new']:.3f}); new / old {lowest['new'] / lowest['old']:.3f} "
          f"(median rounds {median['new'] / median['old']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
