"""Which ATen ops of real CNNs have no TVM lowering: captures one model of every timm CNN family and every
torchvision classification CNN that builds offline (random weights), runs the inference passes, and lists
the ops that would make the TVM target refuse the model (relax_emit.unsupported_nodes), with the models
that use them.

    python benchmarks/op_coverage.py [--compile | --run] [--models timm:A,timm:B] [--out benchmarks/results/op_coverage]

Capture only by default, so the whole scan takes minutes. ``--compile`` also compiles every model with no
unsupported op for the TVM CPU target with the fallback refused (``optimize(..., target="cpu",
strict=True)``, which checks the result against eager) and reports its compile time and relative error.
``--run`` also times each model that compiles against ONNX Runtime, each alone in its own process
(``convopt.bench.compare_model``, short runs: a screen for slow kernels and fallbacks on models no test names,
not a benchmark), and lists the models where convopt is more than ``--slow`` times slower. ``--models``: these
models (timm:NAME, torchvision:NAME) instead of the first model of each family.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch

from convopt.backends.relax_emit import unsupported_nodes
from convopt.capture import capture_program
from convopt.ir.graph import op_label
from convopt.models import load_model
from convopt.pipeline import build, run_passes

# timm modules whose models are convolutional (hybrids with attention stages included when their stem and
# most stages are convs); the pure transformers and MLP mixers are left out
TIMM_CNN_MODULES = [
    "byoanet", "byobnet", "convmixer", "convnext", "cspnet", "densenet", "dla", "dpn", "edgenext", "efficientnet",
    "efficientvit_mit", "fasternet", "ghostnet", "hardcorenas", "hgnet", "hrnet", "inception_next",
    "inception_resnet_v2", "inception_v3", "inception_v4", "lcnetv2", "mambaout", "metaformer", "mobilenetv3",
    "mobilevit", "nasnet", "nfnet", "pnasnet", "rdnet", "regnet", "repghost", "repvit", "res2net", "resnest",
    "resnet", "resnetv2", "rexnet", "selecsls", "senet", "sknet", "starnet", "tresnet", "vgg", "vovnet",
    "xception", "xception_aligned", "fastvit", "efficientformer", "shvit", "cspnext",
]
TORCHVISION_CNNS = [
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3",
    "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0", "vgg11_bn", "wide_resnet50_2",
]


def specs() -> list[str]:
    import timm

    out = []
    for module in TIMM_CNN_MODULES:
        names = timm.list_models(module=module)
        if names:
            out.append(f"timm:{names[0]}")
    return out + [f"torchvision:{name}" for name in TORCHVISION_CNNS]


def scan(spec: str, compile_ok: bool = False, sizes: tuple[int, ...] = (128, 224, 299)) -> tuple[str, list[str], int]:
    """("ok" | "unsupported" | "failed: why", the unsupported ops, the input size captured); with
    ``compile_ok`` "ok" becomes "compiles ..." or "compile failed: why"."""
    torch.manual_seed(0)
    try:
        model = load_model(spec).eval()
    except Exception as e:  # noqa: BLE001 - a model that needs a download or more arguments: skipped
        return f"not built: {type(e).__name__}", [], 0
    last = None
    for size in sizes:  # the first input size the model takes
        try:
            captured = capture_program(model, torch.randn(1, 3, size, size), mode="inference")
            graph, _ = run_passes(captured.graph, build("inference"))
            break
        except Exception as e:  # noqa: BLE001 - some models need a larger input
            last = e
    else:
        return f"not captured: {type(last).__name__}: {str(last)[:80]}", [], 0
    missing = sorted({op_label(n) for n in unsupported_nodes(graph)})
    if missing or not compile_ok:
        return ("unsupported" if missing else "ok"), missing, size
    return compile_status(model, torch.randn(1, 3, size, size)), [], size


def run_status(spec: str, size: int, seconds: float) -> tuple[str, float | None]:
    """convopt's and ONNX Runtime's median ms at batch 1, each in a process of its own, and their ratio."""
    from convopt.bench import compare_model

    results = compare_model(spec, ["convopt", "ort"], seconds=seconds, processes=1, input_shape=(1, 3, size, size))
    failed = [f"{key}: {r['error'][:80]}" for key, r in results.items() if "error" in r]
    if failed:
        return "; ".join(failed), None
    ratio = results["convopt"]["median_ms"] / results["ort"]["median_ms"]
    return (f"convopt {results['convopt']['median_ms']:.3g} ms, ORT {results['ort']['median_ms']:.3g} ms "
            f"({ratio:.2f}x)"), ratio


def compile_status(model, x) -> str:
    import convopt
    from convopt.numerics import relative_error

    start = time.perf_counter()
    try:
        fast = convopt.optimize(model, x, target="cpu", strict=True)  # checks against eager (1e-4)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            x2 = torch.randn_like(x)
            err = relative_error(fast(x2), model(x2))
    except Exception as e:  # noqa: BLE001 - reported per model
        return f"compile failed: {type(e).__name__}: {str(e)[:100]}"
    return f"compiles ({x.shape[-1]}px, {seconds:.0f} s, rel. err {err:.1g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also compile each fully lowered model")
    parser.add_argument("--run", action="store_true", help="also time each model that compiles against ORT")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of timed calls per contender (--run)")
    parser.add_argument("--slow", type=float, default=1.5, help="list models this many times slower than ORT")
    parser.add_argument("--size", type=int, default=128, help="the input size tried first (then 224, 299)")
    parser.add_argument("--models", help="comma-separated model specs instead of one per family")
    parser.add_argument("--out", default="benchmarks/results/op_coverage")
    args = parser.parse_args()
    start = time.perf_counter()
    rows, users, slow = [], defaultdict(list), []
    for spec in args.models.split(",") if args.models else specs():
        status, missing, size = scan(spec, args.compile or args.run, (args.size, 224, 299))
        if args.run and status.startswith("compiles"):
            timing, ratio = run_status(spec, size, args.seconds)
            status += f"; {timing}"
            if ratio is not None and ratio > args.slow:
                slow.append((spec, timing))
        rows.append((spec, status, missing))
        for op in missing:
            users[op].append(spec)
        print(f"{spec:45s} {status:12s} {', '.join(missing)}", flush=True)
    built = [r for r in rows if r[1].startswith(("ok", "unsupported", "compile"))]
    ok = [r for r in built if not r[2]]
    compiled = [r for r in built if r[1].startswith("compiles")]
    lines = [f"# ATen ops without a TVM lowering ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/op_coverage.py{' --compile' if args.compile else ''}{' --run' if args.run else ''}`: {len(ok)} of {len(built)} captured models have "
             f"every op lowered ({len(rows) - len(built)} not built or captured)"
             + (f"; {len(compiled)} of them compile for the TVM CPU target with no fallback and match eager"
                if args.compile else "") + f", {time.perf_counter() - start:.0f} s.",
             "", "| op | models |", "|---|---|"]
    lines += [f"| `{op}` | {len(models)}: {', '.join(models)} |" for op, models in
              sorted(users.items(), key=lambda kv: -len(kv[1]))]
    if args.run:
        lines += ["", f"Slower than ONNX Runtime by more than {args.slow}x (batch 1, 2 threads, each alone in its own "
                  f"process, {args.seconds} s of calls; untuned): {len(slow)}", ""]
        lines += [f"- {spec}: {timing}" for spec, timing in slow]
    lines += ["", "| model | status | ops without a lowering |", "|---|---|---|"]
    lines += [f"| {spec} | {status} | {', '.join(missing)} |" for spec, status, missing in rows]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
