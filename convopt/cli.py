"""The ``convopt`` command: ``convopt dump|optimize|bench MODEL ...`` and ``convopt calibrate``."""

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
    return model, torch.randn(parse_shape(args.input_shape))


def _dump(args) -> int:
    from . import capture
    from .ir import to_dot
    from .pipeline import PIPELINES, run_passes, select_passes

    model, x = _prepare(args)
    graph = capture(model, x, mode=args.mode)
    passes = select_passes(PIPELINES[args.mode], skip=args.skip_pass)
    if args.target == "cpu" and args.mode == "inference":  # the conv lowerings optimize() would choose
        from .backends.tvm_backend import host_target
        from .optimize import _lowering_pass

        passes = (*passes, _lowering_pass(host_target(), _lowering_arg(args)))
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
    from . import capture, optimize
    from .optimize import CheckError, check_against_eager

    model, x = _prepare(args)
    before = capture(model, x, mode=args.mode).op_counts()
    start = time.perf_counter()
    result = optimize(model, x, target=args.target, mode=args.mode, dump_ir=args.dump_ir,
                      skip_passes=args.skip_pass, check=False, lowering=_lowering_arg(args))
    seconds = time.perf_counter() - start
    after = result.graph.op_counts()
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
    try:
        check_against_eager(model, result, x)
        print("check: matches eager PyTorch (relative error within tolerance)")
    except CheckError as e:
        print(f"check FAILED: {e}")
        return 1
    return 0


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
    from .cost.calibrate import CALIBRATION_SHAPES, calibrate
    from .cost.profile import measure_machine, save_profile

    profile = measure_machine()
    print(f"{profile.cpu}: {profile.cores} cores, GEMM {profile.peak_flops / 1e9:.0f} GFLOP/s, "
          f"copy {profile.bandwidth / 1e9:.1f} GB/s, caches {profile.caches}")
    shapes = CALIBRATION_SHAPES[::3] if args.quick else CALIBRATION_SHAPES
    profile, _ = calibrate(profile, shapes=shapes, progress=print)
    for name, coefs in profile.coefficients.items():
        print(f"  {name:10s} " + "  ".join(f"{k}={v:.3g}" for k, v in coefs.items()))
    print(f"wrote {save_profile(profile, args.output and Path(args.output))}")
    return 0


def _bench(args) -> int:
    from .bench import compare_model, markdown_table
    from .models import parse_shape

    contenders = [c for c in (args.convopt + "," + args.vs).split(",") if c]
    info = compare_model(args.model, contenders, args.rounds, args.warmup, parse_shape(args.input_shape))
    base = info.get(contenders[0], {}).get("median_ms")
    rows = [{"contender": c, "median ms": r.get("median_ms", r.get("error", "-")),
             "rel. error vs eager": r.get("relative_error", "-"),
             f"{contenders[0]} / this": base / r["median_ms"] if base and "median_ms" in r else "-"}
            for c, r in info.items()]
    print(f"{args.model}, input {args.input_shape}, 2 threads, medians of {args.rounds} interleaved rounds")
    print(markdown_table(rows, list(rows[0])))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
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
    opt.set_defaults(run=_optimize)
    for p in (dump, opt):
        p.add_argument("--lowering", action="append", metavar="NAME|LAYER=NAME",
                       help="force a conv lowering (direct, im2col, im2win, winograd2, winograd4, fft) on every "
                            "conv it can run, or on one layer (module or node name); repeatable")
    dump.add_argument("--target", choices=("none", "cpu"), default="none",
                      help="cpu: also run select_lowering, showing each conv's lowering and predicted times")

    cal = sub.add_parser("calibrate", help="measure this machine and fit the cost model (minutes)")
    cal.add_argument("--quick", action="store_true", help="a third of the calibration shapes")
    cal.add_argument("-o", "--output", help="write the profile here instead of the cache")
    cal.set_defaults(run=_calibrate)

    bench = sub.add_parser("bench", help="time convopt against eager, inductor and ONNX Runtime on one model")
    bench.add_argument("model", help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    bench.add_argument("--input-shape", default="1,3,224,224")
    bench.add_argument("--vs", default="eager,inductor,ort,ort-reparam", help="peers (comma-separated)")
    bench.add_argument("--convopt", default="convopt", help="convopt contenders: convopt (TVM cpu), convopt-torch")
    bench.add_argument("--rounds", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
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
