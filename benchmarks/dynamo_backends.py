"""torch.compile backends side by side: eager, ``backend="convopt"``, PyTorch's own ``backend="tvm"``
(TVM's relax_dynamo) and Inductor, each in its own process (spinning thread pools make interleaved timings
lie), batch 1, 224x224, fp32, under ``torch.no_grad()``.

    python benchmarks/dynamo_backends.py [--models resnet18 repvgg_a0] [--seconds 4]
                                         [--out benchmarks/results/dynamo_backends]

Each row: compile time (the first call), median latency over ``--seconds`` of calls after 3 warm-up calls,
and the relative error against eager (max|a-b| / max|b|). ``tvm`` is also run on timm's reparameterized
model (``reparameterize_model``: BatchNorms folded), since TVM's FX importer refuses ``batch_norm``. A
backend that fails is listed with its error.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, statistics, sys, time
import torch, timm
name, backend, reparam, seconds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
torch.manual_seed(0)
model = timm.create_model(name, pretrained=False).eval()
if reparam:
    from timm.utils.model import reparameterize_model
    model = reparameterize_model(model)
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    expected = model(x)
    fn = model if backend == "eager" else torch.compile(model, backend=backend)
    start = time.perf_counter()
    y = fn(x)
    compile_s = time.perf_counter() - start
    err = float((y - expected).abs().max() / expected.abs().max())
    for _ in range(3):
        fn(x)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter(); fn(x); times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"compile_s": compile_s, "ms": statistics.median(times) * 1e3, "runs": len(times),
                              "rel_err": err}))
"""

RUNS = [("eager", False), ("convopt", False), ("tvm", False), ("tvm", True), ("inductor", False)]


def run_one(name: str, backend: str, reparam: bool, seconds: float, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", WORKER, name, backend, "1" if reparam else "0", str(seconds)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    errors = [ln for ln in lines if "Error" in ln]
    return {"error": (errors[-1] if errors else lines[-1] if lines else f"exit {done.returncode}")[:160]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "repvgg_a0"])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default="benchmarks/results/dynamo_backends")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    results = []
    for name in args.models:
        for backend, reparam in RUNS:
            row = {"model": name, "backend": backend, "timm_reparameterized": reparam,
                   **run_one(name, backend, reparam, args.seconds, args.timeout)}
            results.append(row)
            print(json.dumps(row), flush=True)
    lines = [f"CPU: {cpu}; `python benchmarks/dynamo_backends.py --models {' '.join(args.models)}`", "",
             "| model | backend | compile (s) | latency (ms) | rel. error |", "|---|---|---|---|---|"]
    for r in results:
        label = r["backend"] + (" on timm-reparameterized" if r["timm_reparameterized"] else "")
        if "error" in r:
            lines.append(f"| {r['model']} | {label} | fails: {r['error'].replace('|', '/')} | | |")
        else:
            lines.append(f"| {r['model']} | {label} | {r['compile_s']:.1f} | {r['ms']:.2f} | {r['rel_err']:.1g} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "results": results}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
