"""Build and time ONE contender on one model, alone in this process; ``convopt.bench`` runs one per contender.

    python -m convopt.bench_worker --model timm:resnet18 --contender ort --result out.json \
        [--input-shape 1,3,224,224] [--seed 0] [--seconds 4]
    python -m convopt.bench_worker --model timm:resnet18 --contender ort --serve   (turns: see below)

Why a process per contender: thread pools (ONNX Runtime, OpenMP, TVM) keep spinning after a call and
slow down whatever runs next in the same process; on a 2-core machine that made ONNX Runtime on
identical graphs differ 1.7x between rows of one run. A fresh process has the cores to itself.

The model and input come from the seed (``torch.manual_seed(seed)`` before ``load_model(spec)`` and
``torch.randn(shape)``), so every process sees the same weights and input and checks its contender
against its own eager output. ``reference_digest`` (a hash of the weights and input) lets the parent
confirm that. The result file holds JSON: median_ms, min_ms, runs, prepare_s, relative_error,
reference_digest, or ``error`` (the contender could not be built or run).

``--serve`` (``convopt.bench`` with turns): the worker builds and checks its contender, writes one JSON line
to stdout (prepare_s, relative_error, reference_digest, or error), then waits on stdin. Each line
``run SECONDS`` is a turn: untimed calls for a quarter of SECONDS (its pools and caches woke up from the
pause before the turn), then timed calls for SECONDS, answered with one line ``{"times": [...]}``;
``quit`` (or the end of stdin) ends it. While it waits for a line its threads are blocked, not running:
the parent gives the cores to one worker at a time. Anything else the process prints goes to stderr, so
stdout carries only those lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
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


def prepare_checked(spec: str, contender: str, input_shape: tuple[int, ...], seed: int = 0
                    ) -> tuple[Callable[[], object], dict]:
    """(a call that runs ``contender`` once, {prepare_s, relative_error, reference_digest}): the contender
    built on the seeded reference and its first output checked against eager. Raises what building raises."""
    torch.set_num_threads(THREADS)
    model, x = reference(spec, input_shape, seed)
    with torch.no_grad():
        expected = model(x)
    start = time.perf_counter()
    run = prepare(contender, model, x)
    output = run()  # the first call is part of preparing: torch.compile compiles here
    prepare_s = time.perf_counter() - start
    return run, {"prepare_s": prepare_s, "relative_error": relative_error(output, expected),
                 "reference_digest": digest(model, x)}


def _error(e: Exception) -> dict:
    return {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}


def measure(spec: str, contender: str, input_shape: tuple[int, ...], seed: int = 0, seconds: float = 4.0) -> dict:
    """Build ``contender``, check its output against eager, warm up, time it; or ``{"error": ...}``."""
    try:
        run, info = prepare_checked(spec, contender, input_shape, seed)
        call_times(run, seconds * WARMUP_FRACTION)
        times = call_times(run, seconds)
    except Exception as e:  # a peer that cannot run this model is reported, not fatal
        return _error(e)
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "runs": len(times), **info}


def serve(spec: str, contender: str, input_shape: tuple[int, ...], seed: int, commands, answer) -> None:
    """The ``--serve`` protocol (module docstring): ``commands`` yields the parent's lines, ``answer(dict)``
    sends one line back."""
    try:
        run, info = prepare_checked(spec, contender, input_shape, seed)
    except Exception as e:
        answer(_error(e))
        return
    answer(info)
    for line in commands:
        words = line.split()
        if not words or words[0] == "quit":
            return
        if words[0] != "run" or len(words) != 2:
            answer({"error": f"unknown command {line.strip()!r}: expected 'run SECONDS' or 'quit'"})
            return
        seconds = float(words[1])
        try:
            call_times(run, seconds * WARMUP_FRACTION)
            answer({"times": call_times(run, seconds)})
        except Exception as e:
            answer(_error(e))
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    parser.add_argument("--contender", required=True)
    parser.add_argument("--result", help="write the JSON result here (required without --serve)")
    parser.add_argument("--serve", action="store_true", help="time in turns the parent gives (module docstring)")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.serve:
        # stdout carries the protocol alone: everything else this process (or a library in it) prints goes to
        # stderr, at the file descriptor, so that a C library's prints can't corrupt a line
        channel = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

        def answer(message: dict) -> None:
            channel.write(json.dumps(message) + "\n")

        serve(args.model, args.contender, parse_shape(args.input_shape), args.seed, sys.stdin, answer)
        return 0
    if not args.result:
        parser.error("--result is required without --serve")
    result = measure(args.model, args.contender, parse_shape(args.input_shape), args.seed, args.seconds)
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
