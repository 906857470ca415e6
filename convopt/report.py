"""``convopt report``: where the time of a compiled model goes, kernel by kernel, against the machine's roofline.

Every packed call the Relax VM makes is timed (``VirtualMachine.set_instrument``: a callback before and after
each call, about 10% overhead in total) over several runs; per kernel (a conv with its fused epilogue, a fused
chain of other ops, a VM builtin) the report gives

    ms          time per model run (all calls of the kernel in one run): the lowest, over ``rounds`` rounds
                spread over a few seconds, of the round's median
    share       of the sum of the kernels' times (each its lowest round: a composite run)
    GFLOP/s     its FLOPs (a conv's direct 2 x multiply-adds, whatever its lowering; TVM's estimate for the
                rest) per second
    GB/s        the bytes of its arguments (each read or written at least once) per second
    bound       the roofline time: max(FLOPs / peak, bytes / bandwidth) with the machine profile's measured
                peak (register-resident FMAs on all cores, cost/peak.py) and the bandwidth of a large copy
                measured in each round, right after its runs (the highest of the rounds)
    x bound     net ms / bound: how far the kernel is from the roofline (1 is on it); net ms (``net_ms``) is ms
                less the instrument's own cost a call (``call_overhead_us``: the median time of a VM call that
                does nothing, ``INSTRUMENT_PROBE``, measured in the same runs) times the kernel's calls. GFLOP/s
                and GB/s are per net second too. On Zen 5 (2 cores) the instrument costs 0.35-0.36 us a call, a
                third of a one-pixel squeeze-excite conv's 1 us; efficientnet_b0's 358 calls add up to 2.51 ms
                net against 2.42 plain and 2.64 instrumented (session 49)
    schedule    how convopt's kernel was scheduled: "tuned" (a tuning record), "default" (records, none
                faster), "untuned" (none, or ``convopt report --untuned``), "stale" (records of an older
                default schedule: the default runs)

Why rounds: this machine is shared, and a neighbour's phases (seconds long) slow memory-bound kernels much
more than compute-bound ones: mobilenetv2's first depthwise conv (32 channels at 112 px) took 35 us in one
run of ``convopt report`` and 121 us in the next, while its convs with 300+ FLOP/byte moved 10%. The runs of
one round fall in one phase, so one round's medians can call a kernel 3x off its roofline that is on it
when the machine is quiet; the lowest round median is what the kernel takes on a quiet machine (the same
policy as ``convopt bench``: the lowest of per-process medians). Each kernel's lowest may come from a
different round, so ``instrumented_ms`` (their sum) can be below any one run's.

Why the bandwidth is measured in the rounds: the host's memory bandwidth moves more than its kernels do. A
128 MiB copy on both cores of the Zen 5 this was built on measured 123 GB/s one morning (the profile cached
then) and 43-45 GB/s three times in a row hours later, when efficientnet_b0's memory-bound depthwise convs
read 3.9-4.8x "their bound" against the cached figure. A bound is the machine's as it was while the kernels
ran: the same rounds, the highest of them, as the kernels' times are the lowest (``bandwidth_gb_s``; the
cached profile's figure is kept as ``profile_bandwidth_gb_s``). The FMA roof stays the profile's: it is
register-resident and measured 527 GFLOP/s, the cores' nominal peak, whenever it was measured.

Phases can outlast a report's rounds too: ``merge_reports`` merges reports of one build run minutes apart (each
in its own process, as benchmarks/roofline_summary.py --turns does) by the same rules, each kernel's lowest
time and the highest bandwidth.

``convopt report`` writes ``report.json`` and ``roofline.png`` (arithmetic intensity against achieved FLOP/s, a point per
kernel coloured by lowering, the roofs from the profile).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .capture import as_args
from .cost.profile import COPY_FLOATS, MachineProfile, copy_bandwidth, load_profile


@dataclass(frozen=True)
class KernelTime:
    name: str  # the PrimFunc or builtin the VM calls
    kind: str  # the lowering of a conv kernel, "op" for other kernels, "builtin" for the VM's own calls
    calls: int  # per model run
    seconds: float  # median per model run, all calls
    flops: int  # per model run
    bytes: int  # per model run
    nodes: tuple[str, ...]  # IR nodes of a conv kernel
    # convopt's kernels: how it was scheduled (tuning/apply.py: "tuned" by a record, "default", "untuned",
    # "stale"); "" for TVM's kernels and builtins
    schedule: str = ""


# PyTorch's OpenMP workers keep spinning after an eager op (optimize()'s check runs the eager model) and take
# cores from TVM's: on 2 cores mobilenetv2_100 ran 2.5x slower right after an eager run, still 1.35x slower
# 50 ms later, and at full speed after 100 ms. So every timing here starts after this much warm-up.
SETTLE_SECONDS = 0.5
# Rounds of timing, spread over a few seconds so that a neighbour's slow phase doesn't decide (module docstring);
# between rounds the pools idle for the gap, and the next round settles again first.
ROUNDS = 5
ROUND_GAP_SECONDS = 0.3
ROUND_SETTLE_SECONDS = 0.2


def settle(run, seconds: float = SETTLE_SECONDS) -> None:
    """Call ``run`` for ``seconds`` (at least twice): warm caches, and time for other pools to stop spinning."""
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        run()
        calls += 1


def time_kernels(fast, example_inputs: Any, *, runs: int = 10, rounds: int = ROUNDS,
                 after_round: Callable[[], None] | None = None) -> tuple[list[KernelTime], float]:
    """(per-kernel times of ``fast`` on ``example_inputs``, seconds of a plain run without the instrument) for
    a module optimized for a TVM target: per kernel and for the plain run, the lowest over ``rounds`` rounds
    (``ROUND_GAP_SECONDS`` apart) of the median over the round's ``runs`` runs. ``after_round`` is called at
    the end of each round (a measurement that should see the same phase of the machine)."""
    compiled = getattr(fast, "_compiled", None)
    vm = getattr(compiled, "vm", None)
    if vm is None:
        raise ValueError("convopt report times modules compiled with TVM (target 'cpu' or 'cuda'), "
                         f"not target {fast.target!r}")
    args = as_args(example_inputs)
    samples: list[list[dict[str, list[float]]]] = []
    plain: list[float] = []
    with torch.no_grad():
        for round_index in range(max(1, rounds)):
            if round_index:
                time.sleep(ROUND_GAP_SECONDS)
            settle(lambda: fast(*args), ROUND_SETTLE_SECONDS if round_index else SETTLE_SECONDS)
            plain.append(median_seconds(lambda: fast(*args), runs))
            samples.append(_instrumented_runs(vm, lambda: fast(*args), runs))
            if after_round is not None:
                after_round()
    return _aggregate(samples, compiled.kernels), min(plain)


def median_seconds(run, runs: int) -> float:
    """The median seconds of ``runs`` calls of ``run()``, each timed alone."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _instrumented_runs(vm, run, runs: int) -> list[dict[str, list[float]]]:
    """Per run, the seconds of every call of each packed function the VM made."""
    samples: list[dict[str, list[float]]] = []
    started: dict[str, float] = {}

    def instrument(func, name, before_run, ret_value, *call_args):
        now = time.perf_counter()
        if before_run:
            started[name] = now
        else:
            samples[-1][name].append(now - started.pop(name))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            samples.append(defaultdict(list))
            run()
    finally:
        vm.set_instrument(None)
    return samples


def _aggregate(rounds: list[list[dict[str, list[float]]]], table: dict[str, dict]) -> list[KernelTime]:
    """One row per kernel: its calls per run and, over the rounds, the lowest median of its per-run seconds."""
    rows = []
    names = dict.fromkeys(name for samples in rounds for run in samples for name in run)  # in order of first call
    for name in names:
        info = table.get(name)
        present = [samples for samples in rounds if name in samples[0]]  # a round that called it
        calls = len(present[0][0][name])
        per_run = min(statistics.median(sum(run.get(name, ())) for run in samples) for samples in present)
        if info is None:
            kind, flops, nbytes, nodes, schedule = "builtin", 0, 0, (), ""
        else:
            kind = info["lowering"] or "op"
            flops, nbytes, nodes = info["flops"] * calls, info["bytes"] * calls, tuple(info["nodes"])
            schedule = info.get("tuning", {}).get("status", "untuned" if info["lowering"] else "")
        rows.append(KernelTime(name, kind, calls, per_run, flops, nbytes, nodes, schedule))
    return sorted(rows, key=lambda r: -r.seconds)


def build_report(rows: list[KernelTime], plain_seconds: float, profile: MachineProfile, target_key: str,
                 model: str = "", bandwidths: list[float] = ()) -> dict:
    """The report of ``rows`` against the roofline of ``profile``, its bandwidth the highest of ``bandwidths``
    (bytes/s measured in the timing rounds) where given."""
    roof = {"peak_gflops": profile.roof_flops / 1e9, "gemm_gflops": profile.peak_flops / 1e9,
            "bandwidth_gb_s": (max(bandwidths) if bandwidths else profile.bandwidth) / 1e9}
    return {"model": model, "target": target_key, "cpu": profile.cpu, **roof,
            "profile_bandwidth_gb_s": profile.bandwidth / 1e9, "round_bandwidths_gb_s": [b / 1e9 for b in bandwidths],
            "run_ms": plain_seconds * 1e3, **_against_roofline([asdict(r) for r in rows], roof)}


# A VM call that does nothing (a register cleared after its value's last use, KillAfterLastUse): its time under
# the instrument is the instrument's own cost a call, which every other call's time includes too
INSTRUMENT_PROBE = "vm.builtin.null_value"


def call_overhead_seconds(kernels: list[dict]) -> float:
    """The instrument's cost a call: the probe's time a call (0 where the model makes no such call)."""
    probe = next((k for k in kernels if k["name"] == INSTRUMENT_PROBE and k["calls"]), None)
    return probe["seconds"] / probe["calls"] if probe is not None else 0.0


def _against_roofline(kernels: list[dict], roof: dict) -> dict:
    """``instrumented_ms``, the instrument's cost a call, and the kernels (dicts of KernelTime's fields) with
    their share, their time net of the instrument's cost (``net_ms``), and from that their rates and distance to
    the roofline ``roof`` (peak_gflops, bandwidth_gb_s)."""
    peak, bandwidth = roof["peak_gflops"] * 1e9, roof["bandwidth_gb_s"] * 1e9
    total = sum(k["seconds"] for k in kernels)
    overhead = call_overhead_seconds(kernels)
    entries = []
    for k in kernels:
        seconds = k["seconds"]
        net = max(seconds - k["calls"] * overhead, 0.0)
        bound = max(k["flops"] / peak, k["bytes"] / bandwidth)
        entries.append({**_kernel_fields(k), "ms": seconds * 1e3, "net_ms": net * 1e3,
                        "share": seconds / total if total else 0.0,
                        "gflops": k["flops"] / net / 1e9 if net else 0.0,
                        "gbytes_per_s": k["bytes"] / net / 1e9 if net else 0.0,
                        "of_peak": k["flops"] / net / peak if net else 0.0,
                        "bound_ms": bound * 1e3, "x_bound": net / bound if bound else None})
    return {"instrumented_ms": total * 1e3, "call_overhead_us": overhead * 1e6, "kernels": entries}


def _kernel_fields(kernel: dict) -> dict:
    """KernelTime's fields of ``kernel``; a field with a default may be missing (a report saved before it was
    added, which merge_reports reads)."""
    return {f.name: kernel[f.name] if f.default is MISSING else kernel.get(f.name, f.default)
            for f in fields(KernelTime)}


def merge_reports(reports: list[dict]) -> dict:
    """One report from several of the same build (``convopt report`` run in turns, each in its own process):
    each kernel's lowest time, the plain run's lowest, the highest bandwidth measured in any of their rounds;
    shares and bounds computed again from those. A neighbour's slow phase can outlast one report's rounds
    (seconds) and not several reports minutes apart: the lowest is what a kernel takes on a quiet machine,
    as within one report."""
    if not reports:
        raise ValueError("merge_reports needs at least one report")
    first = reports[0]
    names = [k["name"] for k in first["kernels"]]
    for other in reports[1:]:
        if (other["model"], other["target"]) != (first["model"], first["target"]) or \
                sorted(k["name"] for k in other["kernels"]) != sorted(names):
            raise ValueError(f"can't merge reports of different builds: {first['model']} on {first['target']} "
                             f"against {other['model']} on {other['target']} (or other kernels)")
    fastest = {}
    for r in reports:
        for k in r["kernels"]:
            if k["name"] not in fastest or k["seconds"] < fastest[k["name"]]["seconds"]:
                fastest[k["name"]] = k
    rounds = [b for r in reports for b in r.get("round_bandwidths_gb_s") or [r["bandwidth_gb_s"]]]
    roof = {"peak_gflops": first["peak_gflops"], "gemm_gflops": first["gemm_gflops"], "bandwidth_gb_s": max(rounds)}
    kernels = sorted(fastest.values(), key=lambda k: -k["seconds"])
    return {**first, **roof, "round_bandwidths_gb_s": rounds, "run_ms": min(r["run_ms"] for r in reports),
            "reports": len(reports), **_against_roofline(kernels, roof)}


def format_table(report: dict, top: int = 25) -> str:
    lines = [f"{report['model']}: {report['run_ms']:.2f} ms a run ({report['instrumented_ms']:.2f} ms instrumented, "
             f"{report.get('call_overhead_us', 0.0):.2f} us a call the instrument's: rates and x bound net of it), "
             f"target {report['target']}, {report['cpu']}, FMA peak {report['peak_gflops']:.0f} GFLOP/s, "
             f"bandwidth {report['bandwidth_gb_s']:.1f} GB/s{_bandwidth_source(report)}",
             f"{'kernel':44s} {'kind':9s} {'calls':>5s} {'ms':>8s} {'share':>6s} {'GFLOP/s':>8s} {'GB/s':>7s} "
             f"{'of peak':>7s} {'x bound':>7s} schedule"]
    for k in report["kernels"][:top]:
        x_bound = f"{k['x_bound']:7.1f}" if k["x_bound"] else "      -"
        lines.append(f"{k['name'][:44]:44s} {k['kind']:9s} {k['calls']:5d} {k['ms']:8.3f} {k['share']:6.1%} "
                     f"{k['gflops']:8.1f} {k['gbytes_per_s']:7.1f} {k['of_peak']:7.1%} {x_bound} "
                     f"{k.get('schedule', '')}".rstrip())
    rest = report["kernels"][top:]
    if rest:
        lines.append(f"... {len(rest)} more kernels, {sum(k['ms'] for k in rest):.3f} ms")
    return "\n".join(lines)


def _bandwidth_source(report: dict) -> str:
    if not report.get("round_bandwidths_gb_s"):
        return " (the profile's)"
    return f" (a copy in each round, the highest; the cached profile's {report['profile_bandwidth_gb_s']:.1f})"


def plot_roofline(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak, bandwidth = report["peak_gflops"], report["bandwidth_gb_s"]
    points = [k for k in report["kernels"] if k["flops"] and k["bytes"] and k["ms"] > 0]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    intensities = [k["flops"] / k["bytes"] for k in points] or [1.0]
    lo, hi = min(intensities + [peak / bandwidth]) / 4, max(intensities + [peak / bandwidth]) * 4
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peak, bandwidth * x) for x in xs], color="black", linewidth=1.5,
            label=f"roofline: {peak:.0f} GFLOP/s, {bandwidth:.1f} GB/s")
    for kind in sorted({k["kind"] for k in points}):
        chosen = [k for k in points if k["kind"] == kind]
        ax.scatter([k["flops"] / k["bytes"] for k in chosen], [k["gflops"] for k in chosen],
                   s=[20 + 400 * k["share"] for k in chosen], alpha=0.7, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of arguments)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"{report['model']}, {report['run_ms']:.2f} ms, {report['target']}\n(point size: share of the time)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(fast, example_inputs: Any, *, out: str | Path | None = None, runs: int = 10, rounds: int = ROUNDS,
           model: str = "") -> dict:
    """Time ``fast`` kernel by kernel (``rounds`` rounds of ``runs`` runs); write ``out/report.json`` and
    ``out/roofline.png`` when ``out`` is given."""
    target = getattr(getattr(fast, "_compiled", None), "target", None)  # None: time_kernels says what is wrong
    bandwidths: list[float] = []
    here = target is not None and target.is_cpu and target.runs_here
    buffers = (torch.empty(COPY_FLOATS), torch.empty(COPY_FLOATS)) if here else None

    def measure_bandwidth() -> None:  # a GPU's memory is not the host's: its report keeps the profile's figure
        if buffers is not None:
            bandwidths.append(copy_bandwidth(target.cores, buffers=buffers))

    rows, plain = time_kernels(fast, example_inputs, runs=runs, rounds=rounds, after_round=measure_bandwidth)
    result = build_report(rows, plain, load_profile(target, measured_here=True), target.key, model, bandwidths)
    result.update(runs=runs, rounds=rounds)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(result, indent=1))
        plot_roofline(result, folder / "roofline.png")
    return result
