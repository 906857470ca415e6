"""The ``convopt`` command: ``convopt dump|optimize|tune|report|bench|prune MODEL ...`` and ``convopt calibrate``."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from .ir.ops import Op


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    p.add_argument("--input-shape", default="1,3,224,224", help="example input shape (default 1,3,224,224)")
    p.add_argument("--mode", choices=("inference", "train"), default="inference")
    p.add_argument("--skip-pass", action="append", default=[], metavar="NAME", help="leave a pass out (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs")


def _prepare(args):
    from .models import load_model, parse_shape

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    if getattr(args, "mode", "inference") != "train":
        model.eval()  # the inference semantics optimize() computes: BatchNorm statistics, no dropout
    return model, torch.randn(parse_shape(args.input_shape))


def _dump(args) -> int:
    from . import capture
    from .ir import to_dot
    from .pipeline import build, run_passes
    from .target import resolve_target

    target = resolve_target("cpu") if args.target == "cpu" else None  # cpu: the lowerings optimize() would choose
    passes = build(args.mode, target, lowering=_lowering_arg(args), skip=args.skip_pass,
                   fuse_blocks=_fuse_blocks_arg(args))
    model, x = _prepare(args)
    graph = capture(model, x, mode=args.mode)
    graph, records = run_passes(graph, passes, dump_dir=args.after_each_pass, verify=True)
    text = to_dot(graph) if args.format == "dot" else str(graph)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.after_each_pass:
        written = [r.dump.name for r in records if r.dump]
        print(f"wrote 000_capture.ir {' '.join(written)} to {args.after_each_pass}", file=sys.stderr)
    return 0


def _optimize(args) -> int:
    from . import optimize
    from .optimize import CheckError, check_against_eager

    model, x = _prepare(args)
    start = time.perf_counter()
    result = optimize(model, x, target=_target_arg(args.target), mode=args.mode, dump_ir=args.dump_ir,
                      skip_passes=args.skip_pass, check=False, lowering=_lowering_arg(args),
                      fuse_blocks=_fuse_blocks_arg(args),
                      tuning_logs=args.tuning_logs)
    seconds = time.perf_counter() - start
    before, after = result.captured_op_counts, result.graph.op_counts()
    print(f"{args.model}: {sum(before.values())} ops -> {sum(after.values())} ops in {seconds:.1f} s, "
          f"target {result.target}")
    for op in sorted(set(before) | set(after)):
        b, a = before.get(op, 0), after.get(op, 0)
        print(f"  {op:<28} {b:>5} -> {a:<5}{'' if a == b else f' ({a - b:+d})'}".rstrip())
    for r in result.pass_records:
        print(f"  pass {r.name:<24} {r.seconds * 1000:8.1f} ms  {'changed' if r.changed else 'no change'}")
    chosen = Counter(n.attrs.lowering for n in result.graph.nodes if n.op is Op.CONV2D and n.attrs.lowering)
    if chosen:
        print("  conv lowerings: " + ", ".join(f"{name} {count}" for name, count in chosen.most_common()))
    layouts = Counter(getattr(n.type, "layout", "") for n in result.graph.nodes)
    blocked = {layout: count for layout, count in layouts.items() if layout}
    if blocked:
        print("  blocked values: " + ", ".join(f"{count} of {len(result.graph.nodes)} in {layout}"
                                               for layout, count in blocked.items()))
    from .tuning.apply import STATUSES

    tuning = Counter(row["status"] for row in result.tuning.values())
    if tuning:
        gains = [row["speedup"] for row in result.tuning.values() if row["status"] == "tuned" and row["speedup"]]
        print("  tuning: " + ", ".join(f"{tuning[s]} {s}" for s in STATUSES if tuning[s])
              + " (of convopt's kernels: convs, linear layers and fused blocks on a CPU; fused blocks on CUDA)"
              + (f"; tuned kernels {min(gains):.2f}-{max(gains):.2f}x their default" if gains else ""))
    try:
        check_against_eager(model, result, x)
        print("check: matches eager PyTorch (relative error within tolerance)")
    except CheckError as e:
        print(f"check FAILED: {e}")
        return 1
    return 0


def _target_arg(value):
    """--target: a name (cpu, cuda, torch) or a TVM target as JSON."""
    if value is not None and value.lstrip().startswith("{"):
        import json

        return json.loads(value)
    return value


def _tune(args) -> int:
    from . import tune

    model, x = _prepare(args)
    summary = tune(model, x, target=_target_arg(args.target), trials=args.trials, time_budget=args.time_budget,
                   log_dir=args.log_dir, rpc=args.rpc, lowering=_lowering_arg(args), other_ops=args.other_ops,
                   fuse_blocks=_fuse_blocks_arg(args),
                   **({} if args.lowering_margin is None else {"lowering_margin": args.lowering_margin}))
    print(summary.table())
    return 0


def _prune(args) -> int:
    from .models import load_model, parse_shape
    from .tuning.job import prune_records
    from .tuning.records import records_dir
    from .target import resolve_target

    models = []
    for name in args.models:
        torch.manual_seed(args.seed)
        models.append((load_model(name).eval(), torch.randn(parse_shape(args.input_shape))))
    target = resolve_target(_target_arg(args.target))
    pruned = prune_records(models, target=target, log_dir=args.log_dir, lowering=_lowering_arg(args),
                           fuse_blocks=_fuse_blocks_arg(args),
                           other_ops=args.other_ops, dry_run=args.dry_run,
                           **({} if args.lowering_margin is None else {"lowering_margin": args.lowering_margin}))
    verb = "would drop" if args.dry_run else "dropped"
    print(f"{records_dir(target, args.log_dir)}: kept {pruned.workloads_kept} workloads ({pruned.records_kept} "
          f"records) the {len(models)} model(s) use; {verb} {pruned.workloads_dropped} "
          f"({pruned.records_dropped} records)")
    return 0


def _report(args) -> int:
    from . import optimize
    from .report import format_table, report

    model, x = _prepare(args)
    fast = optimize(model, x, target=args.target, skip_passes=args.skip_pass, lowering=_lowering_arg(args),
                    fuse_blocks=_fuse_blocks_arg(args), tuning_logs=False if args.untuned else None)
    result = report(fast, x, out=args.out, runs=args.runs, rounds=args.rounds, model=args.model)
    print(format_table(result, top=args.top))
    if args.out:
        print(f"wrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'roofline.png'}")
    return 0


def _fuse_blocks_arg(args):
    """--fuse-block NAME (repeatable) -> optimize(fuse_blocks={NAME: True, ...}); none: the default (True)."""
    names = getattr(args, "fuse_block", None) or []
    return {name: True for name in names} if names else True


def _lowering_arg(args):
    """--lowering NAME (every conv it can run) or --lowering LAYER=NAME (repeatable) -> optimize(lowering=)."""
    values = getattr(args, "lowering", None) or []
    per_layer = dict(v.split("=", 1) for v in values if "=" in v)
    global_ = [v for v in values if "=" not in v]
    if global_ and per_layer:
        raise ValueError("--lowering: give either one lowering for every conv or LAYER=NAME pairs, not both")
    if len(global_) > 1:
        raise ValueError(f"--lowering: one global lowering, got {global_}")
    return per_layer or (global_[0] if global_ else None)


def _calibrate(args) -> int:
    from .cost.calibrate import CALIBRATION_SHAPES, calibrate, measurements_path, save_measurements
    from dataclasses import replace

    from .cost.profile import MachineProfile, load_profile, measure_machine, profile_path, save_profile, shipped_profiles
    from .cost.weight_stream import calibrate_weight_stream
    from .target import resolve_target

    target = resolve_target("cpu")
    if args.from_logs is not None:
        return _calibrate_from_logs(target, args.from_logs, args.output)
    if args.refit:
        return _calibrate_refit(Path(args.refit), args.output)
    if args.weight_stream and (args.lowerings or args.missing or args.quick):
        print("--weight-stream measures that rate alone: not with --lowerings, --missing or --quick",
              file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else profile_path(target)
    existing = MachineProfile.from_json(output.read_text(), str(output)) if output.is_file() else None
    if args.weight_stream:  # an absolute rate: joins the profile there is, whatever it was fitted against
        profile = calibrate_weight_stream(existing or load_profile(target), target, progress=print)
        print(f"wrote {save_profile(profile, output)}")
        return 0
    # a subset is fitted against the profile it joins, the shipped one for this target if there is one: the
    # other coefficients are ratios to its peak and bandwidth
    partial = bool(args.lowerings or args.missing)
    if partial:
        profile = shipped_profiles().get(target.key) or load_profile(target)
        if existing is not None and "stream_bandwidth" in existing.fitted_here:  # measured for this output: kept
            profile = profile.with_fitted(profile.coefficients, ["stream_bandwidth"],
                                          stream_bandwidth=existing.stream_bandwidth)
        elif "stream_bandwidth" in profile.fitted_here:  # the shipped profile's rate, not measured for this output
            profile = replace(profile, fitted_here=tuple(n for n in profile.fitted_here if n != "stream_bandwidth"))
    else:
        profile = measure_machine(target)
    print(f"{profile.cpu}, target {target.key}: {profile.cores} cores, GEMM {profile.peak_flops / 1e9:.0f} GFLOP/s, "
          f"FMA peak {profile.roof_flops / 1e9:.0f} GFLOP/s, "
          f"copy {profile.bandwidth / 1e9:.1f} GB/s, caches {profile.caches}")
    shapes = CALIBRATION_SHAPES[::3] if args.quick else CALIBRATION_SHAPES
    lowerings = args.lowerings.split(",") if args.lowerings else None
    from .cost.calibrate import calibrate_fused
    from .cost.fused import KEYS as FUSED_KEYS

    # the fused kernels keep no measurements to join: --missing leaves them alone unless named
    fused = [key for key in FUSED_KEYS if (lowerings is None and not args.missing) or key in (lowerings or ())]
    lowerings = None if lowerings is None else [name for name in lowerings if name not in FUSED_KEYS]
    # a partial run joins the measurements of the earlier ones, so that the fit is over all of them
    earlier = _earlier_measurements(target, measurements_path(output)) if partial else []
    if lowerings is None or lowerings:
        profile, records = calibrate(profile, target, shapes=shapes, lowerings=lowerings, passes=args.passes,
                                     earlier=earlier, missing_only=args.missing, progress=print)
        print(f"wrote {save_measurements(records, target, measurements_path(output))}")
    if fused:
        profile = calibrate_fused(profile, target, keys=fused, progress=print)
    if lowerings is None and not (args.missing and "stream_bandwidth" in profile.fitted_here):  # (kept above)
        profile = calibrate_weight_stream(profile, target, progress=print)
    _print_coefficients(profile)
    print(f"wrote {save_profile(profile, output)}")
    return 0


def _earlier_measurements(target, path: Path) -> list:
    """This machine's measurements from earlier calibrations: ``path``'s, else the shipped ones for its key."""
    from .cost.calibrate import load_measurements
    from .cost.profile import SHIPPED_PROFILES

    for where in (path, SHIPPED_PROFILES / "measurements" / f"{target.key}.json"):
        if where.is_file():
            key, lanes, points = load_measurements(where)
            if key == target.key and lanes == target.lanes:
                print(f"joining {len(points)} earlier measurements from {where}")
                return points
            print(f"{where}: measured on {key}, not this machine's {target.key}: not joined", file=sys.stderr)
    return []


def _print_coefficients(profile) -> None:
    for name, coefs in profile.coefficients.items():
        print(f"  {name:10s} " + "  ".join(f"{k}={v:.3g}" for k, v in coefs.items()))


def _calibrate_refit(measurements: Path, output: str | None) -> int:
    """Refit the conv lowerings' coefficients of the profile ``measurements`` belong to (``DIR/<key>.json`` for
    ``DIR/measurements/<key>.json``, as calibrate writes them) to them, with today's formulas."""
    from .cost.calibrate import fit_measured, load_measurements, profile_beside
    from .cost.profile import MachineProfile, save_profile

    key, lanes, points = load_measurements(measurements)
    profile_file = profile_beside(measurements)
    if not profile_file.is_file():
        print(f"{measurements}: no profile {profile_file.name} beside it to refit", file=sys.stderr)
        return 1
    profile = MachineProfile.from_json(profile_file.read_text(), str(profile_file))
    if profile.target_key and profile.target_key != key:
        print(f"{measurements} was measured on {key}, {profile_file} describes {profile.target_key}", file=sys.stderr)
        return 1
    refitted = fit_measured(profile, lanes, points)
    _print_coefficients(refitted)
    print(f"{len(points)} measurements of {key}; wrote {save_profile(refitted, Path(output) if output else profile_file)}")
    return 0


def _calibrate_from_logs(target, folders: list[str], output: str | None) -> int:
    """Refit the cost model to the default schedules' times that tuning jobs measured (lowering_times.json)."""
    from .cost.calibrate import refit_from_measurements
    from .cost.profile import load_profile, profile_path, save_profile
    from .tuning.apply import default_log_dirs
    from .tuning.lowering_times import default_times

    dirs = [Path(f) for f in folders] if folders else default_log_dirs()
    points = default_times(target, dirs)
    if not points:
        where = ", ".join(str(d) for d in dirs) or "no tuning_logs folder"
        print(f"no lowering measurements for target {target.key} under {where}: run `convopt tune` first",
              file=sys.stderr)
        return 1
    profile, report = refit_from_measurements(load_profile(target), target.lanes, points)
    print(f"{len(points)} measurements of default schedules for {target.key} from {', '.join(map(str, dirs))}")
    print(report.table())
    print(f"wrote {save_profile(profile, Path(output) if output else profile_path(target))}")
    return 0


def _bench(args) -> int:
    from .bench import compare_model, entry_keys, machine_description, markdown_table, self_check_warnings, time_ratios
    from .models import parse_shape

    contenders = [c for c in (args.convopt + "," + args.vs).split(",") if c]
    base = entry_keys(contenders)[0]
    results = compare_model(args.model, contenders, args.seconds, args.processes, parse_shape(args.input_shape),
                            progress=lambda line: print(line, file=sys.stderr, flush=True), turns=args.turns)
    if args.turns:
        method = (f"each contender in its own process, the processes given the cores in {args.turns} interleaved "
                  f"turns each, the median of all calls over {args.seconds:g} s")
    else:
        method = (f"each contender alone in its own process, best of {args.processes} process medians over "
                  f"{args.seconds:g} s of calls")
    ratios = time_ratios(results, base)
    rows = [{"contender": key, "median ms": r.get("median_ms", r.get("error", "-")),
             "rel. error vs eager": r.get("relative_error", "-"), f"{base} / this": ratios.get(key, "-")}
            for key, r in results.items()]
    print(f"{args.model}, input {args.input_shape}, {machine_description()}; {method}")
    print(markdown_table(rows, list(rows[0])))
    for warning in self_check_warnings(results):
        print(warning)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .schedules.lowerings import ALL_LOWERINGS  # imports TVM: here, not when convopt.cli is imported

    parser = argparse.ArgumentParser(prog="convopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dump = sub.add_parser("dump", help="print the IR of a model after the pass pipeline")
    _common(dump)
    dump.add_argument("--after-each-pass", metavar="DIR", help="also write the IR after each pass that changed it")
    dump.add_argument("--format", choices=("text", "dot"), default="text")
    dump.add_argument("-o", "--output", help="write to a file instead of stdout")
    dump.set_defaults(run=_dump)
    opt = sub.add_parser("optimize", help="optimize a model and print a summary")
    _common(opt)
    opt.add_argument("--target", default=None,
                     help="cpu, cuda or torch (default: cpu, or torch where TVM cannot compile the graph)")
    opt.add_argument("--dump-ir", metavar="DIR", help="write the IR after each pass that changed it")
    opt.add_argument("--tuning-logs", metavar="DIR",
                     help="also apply the tuning records here (always read: the shipped tuning_logs/, "
                          "$CONVOPT_TUNING_LOGS, ./tuning_logs)")
    opt.set_defaults(run=_optimize)
    tun = sub.add_parser("tune", help="autotune the model's kernels on this machine (or through an RPC tracker); "
                                      "optimize() applies the records")
    _common(tun)
    tun.add_argument("--target", default="cpu", help="cpu (default), cuda, or a TVM target as JSON (e.g. another x86 "
                                                     "CPU, or a GPU, measured through --rpc)")
    tun.add_argument("--other-ops", action="store_true",
                     help="on a CPU, also tune TVM's kernels for the heavy non-conv ops (pooling, norms, elementwise "
                          "chains) with MetaSchedule's default x86 rules")
    tun.add_argument("--trials", type=int, help="tuned trials in all (default 64 per tunable kernel)")
    tun.add_argument("--time-budget", help="stop after this long: seconds, or e.g. 15m, 1h")
    tun.add_argument("--lowering-margin", type=float, metavar="FACTOR",
                     help="also tune each conv's other lowerings predicted within FACTOR of its best; optimize() "
                          "runs the fastest measured (default: convopt.cost.model.MEASURE_MARGIN, 1.25; 1: the cost "
                          "model's choice only)")
    tun.add_argument("--log-dir", default="tuning_logs",
                     help="records go to DIR/<target key>/ (default tuning_logs; a job started again resumes)")
    tun.add_argument("--rpc", metavar="HOST:PORT:KEY", help="measure on the devices registered under KEY with the "
                                                            "TVM RPC tracker at HOST:PORT (builds stay local)")
    tun.set_defaults(run=_tune)
    pru = sub.add_parser("prune", help="drop the tuning records no kernel of the given models uses any more (kernels "
                                       "whose code changed since they were tuned, models no longer tuned)")
    pru.add_argument("models", nargs="+", metavar="MODEL", help="every model the records are kept for")
    pru.add_argument("--input-shape", default="1,3,224,224", help="example input shape (default 1,3,224,224)")
    pru.add_argument("--seed", type=int, default=0)
    pru.add_argument("--target", default="cpu", help="cpu (default), cuda, or a TVM target as JSON")
    pru.add_argument("--log-dir", default="tuning_logs", help="the records' folder (default tuning_logs)")
    pru.add_argument("--lowering-margin", type=float, metavar="FACTOR",
                     help="keep the kernels of the lowerings predicted within FACTOR of each conv's best (default: "
                          "every lowering that runs it)")
    pru.add_argument("--other-ops", action="store_true", help="as for convopt tune")
    pru.add_argument("--dry-run", action="store_true", help="count, change nothing")
    pru.set_defaults(run=_prune)
    rep = sub.add_parser("report", help="time a compiled model kernel by kernel against the machine's roofline")
    _common(rep)
    rep.add_argument("--target", default="cpu", help="a TVM target: cpu (default) or cuda")
    rep.add_argument("--out", metavar="DIR", help="write DIR/report.json and DIR/roofline.png")
    rep.add_argument("--runs", type=int, default=10, help="timed runs per round (default 10)")
    rep.add_argument("--rounds", type=int, default=5,
                     help="rounds of runs, spread over a few seconds; each kernel's lowest round median counts "
                          "(default 5)")
    rep.add_argument("--top", type=int, default=25, help="kernels in the table (default 25)")
    rep.add_argument("--untuned", action="store_true",
                     help="every kernel's default schedule: no tuning records or measured lowering times")
    rep.set_defaults(run=_report)
    for p in (dump, opt, tun, rep, pru):
        p.add_argument("--lowering", action="append", metavar="NAME|LAYER=NAME",
                       help=f"force a conv lowering ({', '.join(ALL_LOWERINGS)}) on every "
                            "conv it can run, or on one layer (module or node name); repeatable")
        p.add_argument("--fuse-block", action="append", metavar="NAME",
                       help="fuse this block (module or node name) whatever the cost model predicts; on CUDA, "
                            "where no cost model decides, the only blocks fused; repeatable")
    dump.add_argument("--target", choices=("none", "cpu"), default="none",
                      help="cpu: also run select_lowering and block_layout, showing each conv's lowering, "
                           "predicted times and the blocked layouts ({NCHW16c} after a type)")

    cal = sub.add_parser("calibrate", help="measure this machine and fit the cost model (minutes)")
    cal.add_argument("--quick", action="store_true", help="a third of the calibration shapes")
    cal.add_argument("-o", "--output", help="write the profile here instead of the cache")
    cal.add_argument("--passes", type=int, default=2,
                     help="sweeps over the shapes, each measurement keeping its fastest (default 2: a shared "
                          "machine's slow phases outlast one shape's measurement)")
    cal.add_argument("--lowerings", help="only these lowerings, '<lowering>@blocked' variants or "
                                         "fused_inverted_residual / fused_pointwise_mlp / fused_conv_pair / fused_bottleneck (the fused "
                                         "block kernels) (comma-separated; "
                                         "default: all); the profile keeps the others' coefficients")
    cal.add_argument("--missing", action="store_true",
                     help="measure only the shapes and lowerings the earlier measurements of this machine lack "
                          "(the output's, else the shipped ones) and fit over all of them")
    cal.add_argument("--weight-stream", action="store_true",
                     help="measure only how fast conv kernels read weights from memory (the profile's "
                          "stream_bandwidth; a few seconds; a full calibration, and --missing where the profile "
                          "lacks it, measure it too)")
    cal.add_argument("--from-logs", nargs="*", metavar="DIR",
                     help="measure nothing: refit the coefficients to the times tuning jobs measured (their "
                          "lowering_times.json) under these tuning_logs folders (default: the shipped ones, "
                          "$CONVOPT_TUNING_LOGS and ./tuning_logs)")
    cal.add_argument("--refit", metavar="MEASUREMENTS",
                     help="measure nothing: refit the conv lowerings' coefficients of the profile these measurements "
                          "belong to (calibrate writes DIR/<key>.json and DIR/measurements/<key>.json) with the "
                          "current formulas: a formula change refits a machine you no longer have")
    cal.set_defaults(run=_calibrate)

    bench = sub.add_parser("bench", help="time convopt against eager, inductor, ONNX Runtime and OpenVINO on one "
                                         "model, each contender alone in its own process")
    bench.add_argument("model", help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    bench.add_argument("--input-shape", default="1,3,224,224")
    bench.add_argument("--vs", default="eager,inductor,ort,ort-reparam,openvino-reparam",
                       help="peers (comma-separated; one listed twice runs twice, a check that the two agree): "
                            "eager, inductor, ort, ort-reparam, openvino, openvino-reparam, convopt, convopt-nchw, "
                            "convopt-untuned, convopt-unfused, convopt-unfused-untuned, convopt-torch")
    bench.add_argument("--convopt", default="convopt",
                       help="convopt contender(s), the base of the ratios: convopt (TVM cpu), convopt-torch")
    bench.add_argument("--seconds", type=float, default=4.0, help="seconds of timed calls per process (default 4)")
    bench.add_argument("--processes", type=int, default=2,
                       help="processes per contender; the fastest process median is reported (default 2)")
    bench.add_argument("--turns", type=int, default=0,
                       help="N: one process per contender, all built first, then given the cores in N interleaved "
                            "turns each (a slow phase of the host hits every contender alike); 0 (default): "
                            "--processes processes one after another")
    bench.add_argument("--json", help="also write the raw results here")
    bench.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, NotImplementedError, RuntimeError) as e:
        print(f"convopt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
