"""A/B of a module constant inside one model: the model as optimize() builds it ("new") against the same model
built with one or more of convopt's module-level constants set otherwise ("old"), both compiled in this process
and timed in alternating rounds (a median of ``--runs`` calls each), so a slow phase of the shared machine hits
both alike.

    python benchmarks/constant_ab.py timm:rexnet_100 --old convopt.schedules.tiling.MIN_PADDED_BLOCKS=10**9
    python benchmarks/constant_ab.py timm:efficientnet_b0 --old convopt.passes.fold_channel_scale.WEIGHT_SHARE=10**9

``--inputs N`` cycles through N copies of the input, one per call, as a stream of frames prepared ahead would
arrive: with N copies larger than the last-level cache together, each call finds its input in memory (the
model's first layer reads it cold) while the weights stay cached as they do between calls.

    python benchmarks/constant_ab.py timm:convnext_atto --old convopt.schedules.row_prefetch.PREFETCH_ROWS=False --inputs 96

The constant must be read when a model is built (a module global looked up by the code that uses it, not copied
at import). Prints the lowest and median round of each build and new / old of the medians.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import itertools
import statistics
import warnings

import torch

from convopt.report import median_seconds

warnings.simplefilter("ignore")


def _assignment(text: str) -> tuple[object, str, object]:
    """"package.module.NAME=value" -> (module, NAME, value)."""
    path, _, value = text.partition("=")
    module_name, _, name = path.rpartition(".")
    module = importlib.import_module(module_name)
    if not hasattr(module, name):
        raise SystemExit(f"{module_name} has no constant {name}")
    return module, name, _value(value)


def _value(text: str):
    """A Python literal, or a power written as 10**9."""
    base, _, power = text.partition("**")
    return ast.literal_eval(base) ** ast.literal_eval(power) if power else ast.literal_eval(text)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    parser.add_argument("--old", action="append", required=True, metavar="MODULE.NAME=VALUE",
                        help="a constant's value for the old build (repeatable)")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=30, help="calls per round")
    parser.add_argument("--untuned", action="store_true", help="both builds without tuning records")
    parser.add_argument("--old-first", action="store_true", help="build (and time in each round) the old one first")
    parser.add_argument("--inputs", type=int, default=1, help="copies of the input, a call each in turn")
    args = parser.parse_args()

    import convopt
    from convopt.models import load_model, parse_shape

    model = load_model(args.model).eval()
    x = torch.randn(*parse_shape(args.input_shape))
    changes = [_assignment(text) for text in args.old]
    saved = [(module, name, getattr(module, name)) for module, name, _ in changes]

    def build_old():
        try:
            for module, name, value in changes:
                setattr(module, name, value)
            return convopt.optimize(model, (x,), **options)
        finally:
            for module, name, value in saved:
                setattr(module, name, value)

    # the build order can matter (where each build's constants land in memory): --old-first swaps it
    options = {"tuning_logs": False} if args.untuned else {}
    builds = {"old": build_old(), "new": convopt.optimize(model, (x,), **options)} if args.old_first else \
        {"new": convopt.optimize(model, (x,), **options), "old": build_old()}

    rounds = {label: [] for label in builds}
    inputs = itertools.cycle([x] + [x.clone() for _ in range(args.inputs - 1)])
    with torch.no_grad():
        for run in builds.values():
            for _ in range(20):
                run(x)
        for _ in range(args.rounds):
            for label, run in builds.items():
                rounds[label].append(median_seconds(lambda: run(next(inputs)), args.runs) * 1e3)
    for label, times in rounds.items():
        print(f"{label}: lowest {min(times):.3f} ms, median {statistics.median(times):.3f} ms")
    print(f"{args.model} {args.input_shape}: new / old {statistics.median(rounds['new']) / statistics.median(rounds['old']):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
