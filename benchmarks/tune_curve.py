"""The tuning curve of a model from its records: estimated end-to-end latency against trials, with the measured
untuned, tuned and peer latencies as horizontal lines.

    python benchmarks/tune_curve.py timm:resnet18 timm:mobilenetv2_100 --log-dir tuning_logs \
        --bench benchmarks/results/tuned_{model}.json --out docs/tuning_curve.png

The records file is in measurement order. After each record of one of the model's tasks, the estimate is
the measured untuned latency (``convopt-untuned`` in the bench JSON, each contender alone in its own
process) less each task's calls x (default - fastest so far). It is an estimate from kernels timed in
isolation; the measured lines say what the model does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import convopt
from convopt.models import load_model
from convopt.target import resolve_target
from convopt.tuning.apply import mean_seconds, trace_key
from convopt.tuning.job import FAILED
from convopt.tuning.records import open_database
from convopt.tuning.tasks import extract_tasks


def curve(spec: str, log_dir: str, untuned_ms: float) -> list[float]:
    """Estimated milliseconds after each of the model's records (the defaults first count as no change)."""
    torch.manual_seed(0)
    target = resolve_target("cpu")
    graph = convopt.optimize(load_model(spec).eval(), torch.randn(1, 3, 224, 224), tuning_logs=False,
                             check=False).graph
    tasks = extract_tasks(graph, target)
    database = open_database(target, log_dir)
    tokens = {t.name: database.commit_workload(t.workload) for t in tasks}
    defaults = {t.name: trace_key(t.default().trace) for t in tasks}
    default_s, best_s, points = {}, {}, []
    for record in database.get_all_tuning_records():
        task = next((t for t in tasks if record.workload.same_as(tokens[t.name])), None)
        if task is None:
            continue
        seconds = mean_seconds(record)
        if seconds >= FAILED:
            continue
        if trace_key(record.trace) == defaults[task.name] and task.name not in default_s:
            default_s[task.name] = seconds
        best_s[task.name] = min(best_s.get(task.name, seconds), seconds)
        saved = sum(t.weight * (default_s[t.name] - best_s[t.name]) for t in tasks if t.name in default_s)
        points.append(untuned_ms - saved * 1000)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--log-dir", default="tuning_logs")
    parser.add_argument("--bench", default="benchmarks/results/tuned_{model}.json",
                        help="convopt bench --json output per model ({model}: the name after 'timm:')")
    parser.add_argument("--out", default="docs/tuning_curve.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.models), figsize=(6 * len(args.models), 4), squeeze=False)
    for ax, spec in zip(axes[0], args.models):
        bench = json.loads(Path(args.bench.format(model=spec.split(":", 1)[1])).read_text())
        points = curve(spec, args.log_dir, bench["convopt-untuned"]["median_ms"])
        ax.plot(range(1, len(points) + 1), points, label="estimated from kernel records")
        for name, style in (("convopt-untuned", "k--"), ("convopt", "g-"), ("ort-reparam", "r:"),
                            ("openvino-reparam", "b-.")):
            if name in bench:
                label = {"convopt": "convopt tuned (measured)", "convopt-untuned": "convopt untuned (measured)"}
                ax.axhline(bench[name]["median_ms"], linestyle=style[1:], color=style[0],
                           label=label.get(name, name))
        ax.set_title(spec)
        ax.set_xlabel("trials (records of the model's kernels)")
        ax.set_ylabel("ms per image")
        ax.legend(fontsize=8)
        print(f"{spec}: {len(points)} records, estimate {points[0]:.2f} -> {points[-1]:.2f} ms; measured untuned "
              f"{bench['convopt-untuned']['median_ms']:.2f}, tuned {bench['convopt']['median_ms']:.2f} ms")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
