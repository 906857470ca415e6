"""Build and time ONE contender on one model, alone in this process; ``convopt.bench`` runs one per contender.

    python -m convopt.bench_worker --model timm:resnet18 --contender ort --result out.json \
        [--input-shape 1,3,224,224] [--seed 0] [--seconds 4]

Why a process per contender: thread pools (ONNX Runtime, OpenMP, TVM) keep spinning after a call and
slow down whatever runs next in the same process; on a 2-core machine that made ONNX Runtime on
identical graphs differ 1.7x between rows of one run. A fresh process has the cores to itself.

The model and input come from the seed (``torch.manual_seed(seed)`` before ``load_model(spec)`` and
``torch.randn(shape)``), so every process sees the same weights and input and checks its contender
against its own eager output. ``reference_digest`` (a hash of the weights and input) lets the parent
confirm that. The result file holds JSON: median_ms, min_ms, runs, prepare_s, relative_error,
reference_digest, or ``error`` (the contender could not be built or run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .contenders import THREADS, prepare
from .models import load_model, parse_shape
from .optimize import relative_error

WARMUP_FRACTION = 0.25  # of the timed seconds, spent calling the contender untimed first
MIN_RUNS = 3  # a model slower than the time budget is still called this often


def reference(spec: str, input_shape: tuple[int, ...], seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model with seeded random weights, in eval mode, and a seeded random input."""
    torch.manual_seed(seed)
    model = load_model(spec).eval()
    return model, torch.randn(input_shape)


def digest(model: torch.nn.Module, x: torch.Tensor) -> str:
    """A short hash of the weights, buffers and input: equal in every process that built the same reference."""
    h = hashlib.sha256(x.numpy().tobytes())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def call_times(run: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per call of ``run`` called back to back for about ``seconds`` (at least MIN_RUNS calls)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_RUNS or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def measure(spec: str, contender: str, input_shape: tuple[int, ...], seed: int = 0, seconds: float = 4.0) -> dict:
    """Build ``contender``, check its output against eager, warm up, time it; or ``{"error": ...}``."""
    torch.set_num_threads(THREADS)
    try:
        model, x = reference(spec, input_shape, seed)
        with torch.no_grad():
            expected = model(x)
        start = time.perf_counter()
        run = prepare(contender, model, x)
        output = run()  # the first call is part of preparing: torch.compile compiles here
        prepare_s = time.perf_counter() - start
        call_times(run, seconds * WARMUP_FRACTION)
        times = call_times(run, seconds)
    except Exception as e:  # a peer that cannot run this model is reported, not fatal
        return {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "runs": len(times),
            "prepare_s": prepare_s, "relative_error": relative_error(output, expected),
            "reference_digest": digest(model, x)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    parser.add_argument("--contender", required=True)
    parser.add_argument("--result", required=True, help="write the JSON result here")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    result = measure(args.model, args.contender, parse_shape(args.input_shape), args.seed, args.seconds)
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
