"""Benchmark harness: every contender built and timed alone in its own process, best of a few processes.

Why not one process: thread pools (ONNX Runtime, OpenMP, TVM) keep spinning after a call and slow down
whoever runs next, so contenders interleaved in one process (A B C A B C ...) measured each other's
leftovers: ONNX Runtime on identical graphs differed 1.7x between rows of one run on this 2-core
machine. ``compare_model`` therefore runs ``python -m convopt.bench_worker`` once per contender, one
after the other and never two at once; the worker builds the contender, checks its output against
eager and reports the median of back-to-back calls over a few seconds.

Why best of several processes: the shared machine sometimes runs a whole process 2x slow. Each
contender gets ``processes`` processes (in rounds: A B C, A B C, so a slow phase hits all alike) and
the reported median is the minimum of the per-process medians (all are kept in ``process_medians_ms``).

A contender may be listed twice (``ort-reparam,ort-reparam``): its entries are keyed ``ort-reparam``
and ``ort-reparam#2``, and ``self_check_warnings`` flags entries of one contender that disagree by more
than 5%, i.e. the noise floor of the run.

Why turns (``turns=N``): this host changes speed by up to 30% for minutes at a time, and a contender timed
minutes after another can land in another phase (peers geomeans of whole runs moved 0.78-0.86 between runs
of the same code). With turns every contender's worker is built first and then waits, blocked; the parent
gives the cores to one worker at a time for N turns each, in rotating order, with a pause between turns
(``TURN_PAUSE_S``) so the last worker's pools stop spinning: every contender samples the same phases, a
few seconds apart. The reported median is over all the contender's timed calls (``turn_medians_ms`` keeps
each turn's). ``self_check_warnings`` still applies: list a peer twice to see the run's noise floor.

In-process interleaved timing of small kernels (cost-model calibration, where a process per call would
cost more than the call) is ``convopt.cost.calibrate.measure_interleaved``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from .contenders import THREADS, check_names

SELF_CHECK_TOLERANCE = 0.05
# between turns: ONNX Runtime's, OpenMP's and TVM's pools spin for a while after a call; benchmarks/lowerings.py saw
# eager PyTorch stall after TVM kernels in a third of its rounds even after a 20 ms pause
TURN_PAUSE_S = 0.2
WORKER_TIMEOUT_S = 1800  # building inductor or convopt on a large model takes minutes on 2 busy cores


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    base = statistics.median(times[baseline])
    out = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        out[name] = {"median_ms": med * 1e3, "min_ms": min(samples) * 1e3, "ratio_vs_" + baseline: med / base,
                     "runs": len(samples)}
    return out


def entry_keys(contenders: list[str]) -> list[str]:
    """One key per listed contender: a repeated name gets ``#2``, ``#3``, ... so each runs separately."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for name in contenders:
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def contender_of(key: str) -> str:
    return key.partition("#")[0]


def run_worker(spec: str, contender: str, input_shape: tuple[int, ...], seed: int, seconds: float) -> dict:
    """One fresh process that builds and times ``contender`` (see ``convopt.bench_worker``); its JSON result."""
    with tempfile.TemporaryDirectory(prefix="convopt-bench-") as tmp:
        result = Path(tmp) / "result.json"
        command = _worker_command(spec, contender, input_shape, seed, "--seconds", str(seconds), "--result", str(result))
        try:
            done = subprocess.run(command, env=_worker_env(), capture_output=True, text=True,
                                  timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"error": f"worker timed out after {WORKER_TIMEOUT_S} s"}
        if result.is_file():
            return json.loads(result.read_text())
    last_line = (done.stderr.strip().splitlines() or [""])[-1][:200]
    return {"error": f"worker exited with code {done.returncode}: {last_line}"}


def _worker_command(spec: str, contender: str, input_shape: tuple[int, ...], seed: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "convopt.bench_worker", "--model", spec, "--contender", contender,
            "--input-shape", ",".join(map(str, input_shape)), "--seed", str(seed), *extra]


def _worker_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TVM_NUM_THREADS": str(THREADS)}


class TurnWorker:
    """One contender's ``bench_worker --serve`` process: built on start (``ready``: its check, or an error),
    then timed a turn at a time (``turn``)."""

    def __init__(self, spec: str, contender: str, input_shape: tuple[int, ...], seed: int):
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nobody reads it until the end
        self._process = subprocess.Popen(_worker_command(spec, contender, input_shape, seed, "--serve"),
                                         env=_worker_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, text=True, bufsize=1)
        self.ready = self._receive()

    def _receive(self) -> dict:
        # one line answers each request, so nothing waits in the reader's buffer and select sees every line
        if not select.select([self._process.stdout], [], [], WORKER_TIMEOUT_S)[0]:
            self._process.kill()
            return {"error": f"worker timed out after {WORKER_TIMEOUT_S} s"}
        line = self._process.stdout.readline()
        if line:
            return json.loads(line)
        code = self._process.wait()
        self._stderr.seek(0)
        last_line = (self._stderr.read().strip().splitlines() or [""])[-1][:200]
        return {"error": f"worker exited with code {code}: {last_line}"}

    def turn(self, seconds: float) -> dict:
        """{"times": seconds per call} of one turn of ``seconds`` of timed calls, or {"error": ...}."""
        try:
            self._process.stdin.write(f"run {seconds}\n")
        except BrokenPipeError:
            pass  # it died: _receive says how
        return self._receive()

    def close(self) -> None:
        try:
            self._process.stdin.write("quit\n")
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stderr.close()


def turn_order(keys: list[str], turn: int) -> list[str]:
    """The contenders' order in turn ``turn``: rotated by one each turn, so none always follows the same one."""
    k = turn % len(keys)
    return keys[k:] + keys[:k]


def compare_model_in_turns(spec: str, contenders: list[str], seconds: float = 4.0, turns: int = 8,
                           input_shape: tuple[int, ...] = (1, 3, 224, 224), seed: int = 0,
                           progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{entry key: result} for each contender on one model, each in one process of its own, timed in ``turns``
    turns of ``seconds / turns`` each, the contenders' turns interleaved (module docstring)."""
    check_names(contenders)
    if turns < 1 or seconds <= 0:
        raise ValueError(f"need at least one turn and a positive time, got {turns} turns, {seconds} s")
    keys = entry_keys(contenders)
    workers: dict[str, TurnWorker] = {}
    results: dict[str, dict] = {}
    times: dict[str, list[float]] = {key: [] for key in keys}
    turn_medians: dict[str, list[float]] = {key: [] for key in keys}
    try:
        for key in keys:  # one at a time: a build has the cores to itself too
            workers[key] = TurnWorker(spec, contender_of(key), input_shape, seed)
            if "error" in workers[key].ready:
                results[key] = workers[key].ready
            if progress:
                progress(f"{spec} {key}: " + (results[key]["error"] if key in results
                                              else f"built in {workers[key].ready['prepare_s']:.1f} s"))
        for turn in range(turns):
            for key in turn_order(keys, turn):
                if key in results:
                    continue
                time.sleep(TURN_PAUSE_S)
                answer = workers[key].turn(seconds / turns)
                if "error" in answer:
                    results[key] = answer
                    continue
                times[key] += answer["times"]
                turn_medians[key].append(statistics.median(answer["times"]) * 1e3)
            if progress:
                progress(f"{spec} turn {turn + 1}/{turns}: " + ", ".join(
                    f"{key} {turn_medians[key][-1]:.3g} ms" for key in keys if key not in results))
    finally:
        for worker in workers.values():
            worker.close()
    for key in keys:
        if key not in results:
            median_ms = statistics.median(times[key]) * 1e3
            results[key] = {**workers[key].ready, "median_ms": median_ms, "min_ms": min(times[key]) * 1e3,
                            "runs": len(times[key]), "turn_medians_ms": turn_medians[key],
                            "process_medians_ms": [median_ms]}
    return {key: results[key] for key in keys}


def best_of(measurements: list[dict]) -> dict:
    """The process with the lowest median, with every process's median; the first error if any failed."""
    failed = [m for m in measurements if "error" in m]
    if failed:
        return failed[0]
    best = min(measurements, key=lambda m: m["median_ms"])
    return {**best, "process_medians_ms": [m["median_ms"] for m in measurements]}


def compare_model(spec: str, contenders: list[str], seconds: float = 4.0, processes: int = 2,
                  input_shape: tuple[int, ...] = (1, 3, 224, 224), seed: int = 0,
                  progress: Callable[[str], None] | None = None, turns: int = 0) -> dict[str, dict]:
    """{entry key: result} for each contender on one model, each timed in ``processes`` processes of its own,
    one after another; with ``turns``, in one process each, given the cores in turns (``compare_model_in_turns``).

    A contender that fails is reported as ``{"error": ...}`` and not run again.
    """
    if turns:
        return compare_model_in_turns(spec, contenders, seconds, turns, input_shape, seed, progress)
    check_names(contenders)
    if processes < 1 or seconds <= 0:
        raise ValueError(f"need at least one process and a positive time, got {processes} processes, {seconds} s")
    keys = entry_keys(contenders)
    measurements: dict[str, list[dict]] = {key: [] for key in keys}
    for process in range(1, processes + 1):
        for key in keys:
            if any("error" in m for m in measurements[key]):
                continue
            result = run_worker(spec, contender_of(key), input_shape, seed, seconds)
            measurements[key].append(result)
            if progress:
                outcome = result.get("error") or f"{result['median_ms']:.3g} ms"
                progress(f"{spec} {key} (process {process}/{processes}): {outcome}")
    return {key: best_of(results) for key, results in measurements.items()}


def paired_ratio(base: dict, other: dict) -> float:
    """base's time over other's: where both were timed in the same turns (``compare_model_in_turns``), the
    geometric mean over the turns of their turn medians' ratio (each pair a few seconds apart, so a phase of
    the host that lasts a few turns cancels out instead of weighing on whichever median caught more of it),
    else the ratio of their medians."""
    a, b = base.get("turn_medians_ms", []), other.get("turn_medians_ms", [])
    if a and len(a) == len(b):
        return geomean([x / y for x, y in zip(a, b)])
    return base["median_ms"] / other["median_ms"]


def time_ratios(results: dict[str, dict], base: str) -> dict[str, float]:
    """{key: base's time / key's (``paired_ratio``)} for every timed entry but ``base``; < 1 means base is
    faster."""
    if "median_ms" not in results.get(base, {}):
        return {}
    return {key: paired_ratio(results[base], r) for key, r in results.items() if key != base and "median_ms" in r}


def _spread(results: dict[str, dict], a: str, b: str) -> tuple[float, str, str]:
    """(slower's time / faster's - 1, the faster key, the slower key) of entries ``a`` and ``b``."""
    ratio = paired_ratio(results[a], results[b])
    return (1 / ratio - 1, a, b) if ratio <= 1 else (ratio - 1, b, a)


def self_check_warnings(results: dict[str, dict]) -> list[str]:
    """Warnings for a repeated contender whose entries disagree by more than 5%, and for workers that
    built different weights or inputs (which would make their numbers incomparable)."""
    warnings = []
    repeats: dict[str, list[str]] = defaultdict(list)
    for key, r in results.items():
        if "median_ms" in r:
            repeats[contender_of(key)].append(key)
    for keys in repeats.values():
        if len(keys) < 2:
            continue
        # the widest pair, measured as the ratios are (paired_ratio): slower / faster - 1
        spread, faster, slower = max(_spread(results, a, b) for a, b in itertools.combinations(keys, 2))
        if spread > SELF_CHECK_TOLERANCE:
            warnings.append(f"warning: {faster} and {slower} differ by {spread:.0%} ({results[faster]['median_ms']:.2f}"
                            f" vs {results[slower]['median_ms']:.2f} ms): differences below that are noise on this run")
    digests = {r["reference_digest"] for r in results.values() if "reference_digest" in r}
    if len(digests) > 1:
        warnings.append("warning: the workers built different weights or inputs; the numbers are not comparable")
    return warnings


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def cpu_isa() -> str:
    """The widest x86 SIMD extension the CPU reports (avx512f or avx2), else the machine's architecture."""
    try:
        flags_line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.machine()
    flags = set(flags_line.split(":", 1)[1].split())
    return next((isa for isa in ("avx512f", "avx2") if isa in flags), platform.machine())


def machine_description() -> str:
    """``CPU model name, ISA, N threads``: what a reader needs to compare numbers across machines."""
    from .cost.profile import cpu_name

    return f"{cpu_name()}, {cpu_isa()}, {THREADS} threads"


def write_report(out_prefix: str, command: str, caption: str, table: str, data: dict) -> None:
    """``out_prefix.md`` (the command, what was measured, the table) and ``out_prefix.json`` (raw data)."""
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(out_prefix + ".json").write_text(json.dumps({"command": command, **data}, indent=2))
    Path(out_prefix + ".md").write_text(f"`{command}` ({caption})\n\n{table}\n")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
