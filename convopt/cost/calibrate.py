"""Calibration: build and time every lowering on a set of conv shapes and fit the cost model's
coefficients to the measurements (``convopt calibrate``).

The shapes are generic (dense, pointwise, strided, grouped, depthwise, large kernels, at the map
sizes of ImageNet CNNs) and deliberately not the layers of the models the cost model is judged on
(benchmarks/lowerings.py), so that judgement measures how the model generalizes.

A variant "<lowering>@blocked" is the lowering with blocked input and output (NCHW[lanes]c), measured on
the shapes where it runs blocked (``Lowering.blocked_io``, channels a multiple of the lanes). Its
coefficients are the lowering's own scaled by one factor fitted to those measurements
(``fit_scale``): the layout changes how fast a kernel's copies and stores run, not what limits its main
loop, and one parameter can't overfit the few shapes each variant runs (eight free coefficients did: a
bytes coefficient 2.4x below the NCHW one made F(4x4) Winograd look fastest on 7x7 maps, where its 38 MB
of transformed weights make it 1.4x slower than F(2x2)).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..schedules.conv_spec import ConvSpec
from ..schedules.fused_block import InvertedResidual, build as build_fused
from ..schedules.fused_mlp import PointwiseMLP, build as build_fused_mlp
from ..schedules.fused_chain import BOTTLENECK_KIND, PAIR_KIND, ConvChain, build as build_fused_chain
from ..schedules.kernel import build_kernel, cold_copies
from ..schedules.lowerings import LOWERINGS, lowering
from ..target import Target
from .fused import KEY as FUSED_KEY, KEYS as FUSED_KEYS, MLP_KEY, fused_features
from .model import BLOCKED, coefficients_key, feature_vector, fit_coefficients, fit_scale, predict, works_blocked
from .profile import FEATURES, MachineProfile


def _conv(c, o, k, hw, stride=1, groups=1, dilation=1) -> ConvSpec:
    pad = dilation * (k // 2)
    return ConvSpec(1, c, hw, hw, o, (k, k), (stride, stride), (pad, pad), (dilation, dilation), groups)


CALIBRATION_SHAPES: tuple[ConvSpec, ...] = (
    # dense 3x3, stride 1 and 2
    _conv(32, 32, 3, 112), _conv(96, 96, 3, 28), _conv(192, 192, 3, 14), _conv(384, 384, 3, 7),
    _conv(48, 80, 3, 40), _conv(32, 64, 3, 112, stride=2), _conv(160, 320, 3, 28, stride=2),
    _conv(3, 24, 3, 224, stride=2), _conv(16, 16, 3, 64, dilation=2), _conv(40, 80, 3, 40, stride=2),
    _conv(200, 200, 3, 20, stride=2), _conv(24, 48, 2, 40, stride=2),
    # pointwise
    _conv(32, 96, 1, 112), _conv(96, 24, 1, 56), _conv(320, 1280, 1, 7), _conv(512, 128, 1, 28),
    _conv(48, 192, 1, 28), _conv(384, 96, 1, 14), _conv(256, 512, 1, 28, stride=2), _conv(640, 128, 1, 7),
    _conv(112, 672, 1, 14), _conv(24, 72, 1, 56), _conv(40, 120, 1, 28), _conv(200, 48, 1, 14),
    _conv(1152, 192, 1, 7), _conv(48, 288, 1, 20), _conv(288, 48, 1, 40), _conv(720, 120, 1, 10),
    # grouped
    _conv(64, 64, 3, 56, groups=4), _conv(128, 128, 3, 28, groups=16, stride=2),
    # depthwise, small to large kernels
    _conv(32, 32, 3, 112, groups=32), _conv(240, 240, 3, 28, groups=240), _conv(672, 672, 5, 14, groups=672),
    _conv(96, 96, 3, 112, stride=2, groups=96), _conv(48, 48, 3, 80, stride=2, groups=48),
    _conv(96, 96, 7, 56, groups=96), _conv(200, 200, 7, 20, groups=200), _conv(400, 400, 7, 10, groups=400), _conv(64, 64, 21, 32, groups=64),
    _conv(192, 192, 17, 16, groups=192), _conv(48, 48, 27, 48, groups=48),
    # dense large kernels
    _conv(3, 32, 7, 224, stride=2), _conv(16, 32, 5, 56), _conv(32, 32, 9, 28),
    # few channels or few pixels (split-channel blocks, low resolutions, late stages): fixed costs per call
    # and per row dominate here, and shapes from 7x7 up with 24 channels or more don't constrain them
    _conv(12, 12, 3, 48), _conv(20, 20, 3, 36), _conv(24, 24, 3, 20), _conv(48, 48, 3, 10), _conv(96, 96, 3, 5),
    _conv(128, 128, 3, 4), _conv(384, 384, 3, 4), _conv(24, 24, 3, 24, stride=2),
    _conv(64, 64, 1, 8), _conv(480, 480, 1, 4), _conv(1536, 384, 1, 4),
)


def repeated(fn: Callable[[], object], seconds: float = 0.005) -> tuple[Callable[[], None], int]:
    """(a call running ``fn`` enough times to last about ``seconds``, how many times).

    The count comes from the fastest of three windows of calls lasting a fifth of ``seconds`` each, not from
    one call nor one window: the first calls of a kernel just built (its pages, its cold copies) or made on
    a busy machine (a thread pool waking up, a neighbour's burst) can take many times the usual time, and
    too small a count leaves the wake-up after each timed round's pause in the per-call time. With one
    window, a 1152->192 1x1 at 7 px built just before got a count of 1 where its neighbours got 107, and
    read 71 us against their 44 (the same kernel three times, Zen 5)."""
    fn()
    per_call = float("inf")
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 5:
                break
        per_call = min(per_call, elapsed / calls)
    count = max(1, int(seconds / max(per_call, 1e-7)))

    def run() -> None:
        for _ in range(count):
            fn()

    return run, count


def measure_interleaved(contenders: dict[str, Callable[[], object]], *, rounds: int = 20,
                        warmup: int = 3, pause: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each contender; every round calls all of them, rotating the start.

    ``pause`` seconds pass before each timed call: thread pools (OpenMP, ONNX Runtime, TVM) spin for a
    while after their work, and without the pause those spinning threads slow down the next contender.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            time.sleep(pause)
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int = 7) -> dict[str, float]:
    """Seconds per call of each entry: the fastest of ``rounds`` rounds that call every entry in rotating
    order (noise on a shared machine only adds time, and interleaving exposes all entries to the same)."""
    runs = {name: repeated(fn) for name, fn in calls.items()}
    times = measure_interleaved({name: run for name, (run, _) in runs.items()}, rounds=rounds, warmup=1,
                                pause=0.01)
    return {name: min(samples) / runs[name][1] for name, samples in times.items()}


def variants(spec: ConvSpec, names: Iterable[str], lanes: int) -> list[str]:
    """The lowerings and "@blocked" variants among ``names`` that run ``spec``."""
    runs = []
    for name in names:
        base, blocked = name.removesuffix(BLOCKED), name.endswith(BLOCKED)
        if lowering(base).supports(spec) is not None:
            continue
        if blocked and not (works_blocked(base, spec, lanes)
                            and spec.in_channels % lanes == 0 and spec.out_channels % lanes == 0):
            continue
        runs.append(name)
    return runs


def all_variants() -> list[str]:
    """Every lowering, and the "@blocked" variant of each that can write blocked outputs."""
    return list(LOWERINGS) + [name + BLOCKED for name in LOWERINGS if lowering(name).writes_blocked]


def build_all(spec: ConvSpec, names: Iterable[str], target: Target, *, seed: int = 0):
    """(input, weight, bias, {name: compiled Kernel with bias and ReLU}) for every lowering or variant in
    ``names``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=gen)
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=gen)
    w /= (spec.in_per_group * spec.kernel[0] * spec.kernel[1]) ** 0.5
    b = torch.randn(spec.out_channels, generator=gen)
    def build(name):
        block = target.lanes if name.endswith(BLOCKED) else None
        return build_kernel(name.removesuffix(BLOCKED), spec, w, b, activation="relu", target=target,
                            in_block=block, out_block=block)

    kernels = {name: build(name) for name in names}
    return x, w, b, kernels


def measure(spec: ConvSpec, names: Iterable[str], target: Target, *, rounds: int = 15) -> dict[str, float]:
    """Seconds per call of each lowering in ``names`` on ``spec`` (``target``: this host), timed interleaved,
    each call on tensors that are not in L2 (``cold_copies``)."""
    x, _, _, kernels = build_all(spec, names, target)
    return time_interleaved({name: k.bound(x, copies=cold_copies(k.footprint_bytes(), target))
                             for name, k in kernels.items()}, rounds)


def calibrate(profile: MachineProfile, target: Target, *, shapes: Iterable[ConvSpec] = CALIBRATION_SHAPES,
              lowerings: Iterable[str] | None = None, passes: int = 1,
              earlier: Iterable[tuple[ConvSpec, str, float]] = (), missing_only: bool = False,
              progress: Callable[[str], None] | None = None) -> tuple[MachineProfile, list[dict]]:
    """(profile with fitted coefficients, one measurement record per (lowering, shape)); ``lowerings``:
    names and "@blocked" variants (default ``all_variants()``); the profile's other coefficients stay.

    ``passes``: sweeps over all the shapes, each (lowering, shape) keeping its fastest: a shared machine's slow
    phases last seconds, longer than one shape's measurement, so only a later sweep escapes them.
    ``earlier``: measurements of this machine from an earlier run ((spec, variant, seconds), as
    ``load_measurements`` gives them): the records and the fit are over them and the new ones, a new
    measurement replacing an earlier one of the same shape and variant; ``missing_only``: measure only
    the (shape, variant) pairs ``earlier`` lacks (shapes added to the calibration set since)."""
    lowerings = all_variants() if lowerings is None else list(lowerings)
    shapes = list(shapes)
    known = {(spec, name): seconds for spec, name, seconds in earlier}
    fastest: dict[tuple[ConvSpec, str], float] = {}
    for sweep in range(passes):
        for spec in shapes:
            names = [name for name in variants(spec, lowerings, target.lanes)
                     if not (missing_only and (spec, name) in known)]
            if not names:
                continue
            for name, seconds in measure(spec, names, target).items():
                if progress:
                    progress(f"{name:18s} {spec.describe():32s} {seconds * 1e3:9.3f} ms"
                             + (f"  (pass {sweep + 1} of {passes})" if passes > 1 else ""))
                fastest[spec, name] = min(seconds, fastest.get((spec, name), seconds))
    merged = {**known, **fastest}
    records = [{"lowering": name, "spec": spec.key(), "seconds": seconds} for (spec, name), seconds in merged.items()]
    fitted = fit_measured(profile, target.lanes, [(spec, name, s) for (spec, name), s in merged.items()])
    return replace(fitted, calibrated_on=f"{profile.cpu} ({target.key})"), records


def fit_measured(profile: MachineProfile, lanes: int, measured: Iterable[tuple[ConvSpec, str, float]]) -> MachineProfile:
    """The profile with the coefficients of every variant in ``measured`` ((spec, lowering or
    "<lowering>@blocked", seconds)) fitted to them: a lowering's own by ``fit_coefficients``, an "@blocked"
    variant as its lowering's scaled by one factor. The measurements are relative to ``profile``'s peak and
    bandwidth, so they must come from the machine it describes."""
    rows: dict[str, list] = {}
    for spec, name, seconds in measured:
        rows.setdefault(name, []).append((feature_vector(name.removesuffix(BLOCKED), spec, profile, lanes), seconds))
    coefficients = dict(profile.coefficients)
    for name, points in sorted(rows.items(), key=lambda item: item[0].endswith(BLOCKED)):  # bases first
        features, seconds = (np.array(v) for v in zip(*points))
        base = coefficients.get(name.removesuffix(BLOCKED)) if name.endswith(BLOCKED) else None
        if name.endswith(BLOCKED) and base is None:
            raise ValueError(f"{name}: calibrate {name.removesuffix(BLOCKED)} (its NCHW coefficients) first")
        if base is not None:
            scale = fit_scale(features @ np.array([base.get(f, 0.0) for f in FEATURES]), seconds)
            coefficients[name] = {f: scale * base.get(f, 0.0) for f in FEATURES}
        else:
            coefficients[name] = fit_coefficients(features, seconds)
    return profile.with_fitted(coefficients, list(rows))


MEASUREMENTS_FORMAT = "convopt-calibration-measurements-1"


def measurements_path(profile_path: Path) -> Path:
    """Where the measurements behind a profile are kept: ``DIR/<key>.json`` -> ``DIR/measurements/<key>.json``."""
    return profile_path.parent / "measurements" / profile_path.name


def profile_beside(measurements: Path) -> Path:
    """The profile whose measurements ``measurements`` are (``measurements_path``'s inverse)."""
    return measurements.parent.parent / measurements.name


def save_measurements(records: list[dict], target: Target, path: Path) -> Path:
    """Write ``calibrate``'s records, so that a later change to the formulas can refit this machine's
    coefficients (``load_measurements`` + ``fit_measured``) without the machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": MEASUREMENTS_FORMAT, "target": target.key, "lanes": target.lanes,
                                "measurements": sorted(records, key=lambda r: (r["spec"], r["lowering"]))}, indent=1))
    return path


def load_measurements(path: Path) -> tuple[str, int, list[tuple[ConvSpec, str, float]]]:
    """(target key, SIMD lanes, [(spec, variant, seconds)]) from a file ``save_measurements`` wrote; a corrupt or foreign
    file is refused with a ValueError naming it."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != MEASUREMENTS_FORMAT:
            raise ValueError(f"not a {MEASUREMENTS_FORMAT} file")
        known = set(all_variants())
        points = []
        for record in data["measurements"]:
            name, seconds = record["lowering"], float(record["seconds"])
            if name not in known:
                raise ValueError(f"unknown lowering {name!r}")
            if not (np.isfinite(seconds) and seconds > 0):
                raise ValueError(f"non-positive time {seconds} for {name} on {record['spec']}")
            points.append((ConvSpec.from_key(record["spec"]), name, seconds))
        lanes = int(data["lanes"])
        if lanes not in (4, 8, 16):
            raise ValueError(f"lanes {lanes}")
        return str(data["target"]), lanes, points
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unusable calibration measurements ({e})") from e


MIN_POINTS = 3  # measurements a variant needs before its coefficients are refitted


@dataclass(frozen=True)
class Refit:
    """One variant's refit from measurements: its scale and the median relative error before and after."""

    variant: str
    points: int
    scale: float  # 1.0: left as it was (fewer than MIN_POINTS measurements)
    error_before: float
    error_after: float


@dataclass(frozen=True)
class RefitReport:
    refits: list[Refit]
    hit_rate_before: float | None  # shapes whose predicted-fastest measured lowering is within 10% of the
    hit_rate_after: float | None   # measured fastest, over shapes with two or more measured in one layout
    shapes: int

    def table(self) -> str:
        lines = [f"{'variant':<20} {'points':>6} {'scale':>6} {'median error before':>20} {'after':>7}"]
        lines += [f"{r.variant:<20} {r.points:>6} {r.scale:>6.2f} {r.error_before:>19.0%} {r.error_after:>7.0%}"
                  for r in self.refits]
        if self.shapes:
            lines.append(f"hit rate (predicted fastest within 10% of the measured fastest) on {self.shapes} shapes: "
                         f"{self.hit_rate_before:.0%} before, {self.hit_rate_after:.0%} after")
        return "\n".join(lines)


def _hit_rate(groups: dict, predicted: Callable[[ConvSpec, str], float]) -> tuple[float | None, int]:
    compared = [(spec, times) for spec, times in groups.values() if len(times) > 1]
    if not compared:
        return None, 0
    hits = 0
    for spec, times in compared:
        pick = min(times, key=lambda name: predicted(spec, name))
        hits += times[pick] <= 1.1 * min(times.values())
    return hits / len(compared), len(compared)


def refit_from_measurements(profile: MachineProfile, lanes: int, measurements: Iterable[tuple[ConvSpec, str, float]],
                            *, min_points: int = MIN_POINTS) -> tuple[MachineProfile, RefitReport]:
    """The profile with each variant's coefficients scaled to fit ``measurements`` ((spec, lowering or
    "<lowering>@blocked", seconds of its default schedule), e.g. from tuning jobs: tuning/lowering_times.py).

    One factor per variant (``fit_scale``), as for the "@blocked" variants: the measurements come from the
    layers of the models tuned, often a few shapes per lowering, and a full refit of eight coefficients on
    them would fit those layers and lose the generic calibration shapes. A variant without coefficients of
    its own (an "@blocked" one the profile predicts with the NCHW ones) gets the scaled NCHW ones."""
    measurements = list(measurements)

    def predictor(prof: MachineProfile):
        def predicted(spec: ConvSpec, name: str) -> float:
            return predict(name.removesuffix(BLOCKED), spec, prof, lanes, blocked=name.endswith(BLOCKED))
        return predicted

    def median_error(prof: MachineProfile, points) -> float:
        return float(np.median([abs(predictor(prof)(spec, name) / s - 1) for spec, name, s in points]))

    by_variant: dict[str, list] = {}
    for point in measurements:
        by_variant.setdefault(point[1], []).append(point)
    coefficients = dict(profile.coefficients)
    scales = {}
    for name, points in sorted(by_variant.items()):
        base = name.removesuffix(BLOCKED)
        if base not in profile.coefficients or len(points) < min_points:
            continue
        own = coefficients_key(base, name.endswith(BLOCKED), profile)
        old = np.array([predictor(profile)(spec, name) for spec, _, _ in points])
        scales[name] = fit_scale(old, np.array([s for _, _, s in points]))
        coefficients[name] = {f: scales[name] * v for f, v in profile.coefficients[own].items()}
    refitted = profile.with_fitted(coefficients, scales)
    refits = [Refit(name, len(points), scales.get(name, 1.0), median_error(profile, points),
                    median_error(refitted, points)) for name, points in sorted(by_variant.items())
              if name.removesuffix(BLOCKED) in profile.coefficients]
    groups: dict = {}  # (shape, layout) -> (spec, {variant: seconds})
    for spec, name, seconds in measurements:
        if name.removesuffix(BLOCKED) in profile.coefficients:
            groups.setdefault((spec, name.endswith(BLOCKED)), (spec, {}))[1][name] = seconds
    before, shapes = _hit_rate(groups, predictor(profile))
    after, _ = _hit_rate(groups, predictor(refitted))
    return refitted, RefitReport(refits, before, after, shapes)


def _block(C, E, O, hw, k=3, stride=1):
    return InvertedResidual.of(C, E, O, hw, hw, k, stride)


# generic inverted residual blocks (expansion 3-6, kernels 3-7, strides 1-2, maps 7-112), not the dev models'
FUSED_SHAPES = (
    _block(16, 64, 16, 112), _block(24, 96, 24, 64), _block(32, 128, 48, 48, stride=2), _block(40, 160, 40, 40, k=5),
    _block(48, 288, 48, 28), _block(64, 256, 96, 28, k=5, stride=2), _block(80, 320, 80, 20, k=7),
    _block(96, 384, 96, 14), _block(128, 512, 128, 10, k=5), _block(192, 768, 192, 7), _block(16, 48, 24, 80, stride=2),
)


# generic pointwise MLPs (ratios 3-4, with and without the residual, 7-56 px, narrow to wide), not the dev models'
MLP_SHAPES = (
    PointwiseMLP.of(32, 128, 32, 64, 64), PointwiseMLP.of(48, 192, 48, 56, 56, residual=False),
    PointwiseMLP.of(64, 256, 64, 40, 40), PointwiseMLP.of(96, 288, 96, 28, 28, activation="relu"),
    PointwiseMLP.of(128, 512, 128, 20, 20), PointwiseMLP.of(192, 768, 192, 14, 14),
    PointwiseMLP.of(256, 1024, 256, 10, 10), PointwiseMLP.of(384, 1536, 384, 7, 7),
    PointwiseMLP.of(24, 96, 24, 80, 80),
)


# generic dense chains: basic blocks and VGG-style pairs (3x3 and 5x5, stride 1-2, 7-112 px), bottlenecks
# (ratio 4, stride 1-2, 7-56 px); not the dev models'
CHAIN_SHAPES = {
    "fused_" + PAIR_KIND: (
        ConvChain.of(16, 16, 16, 112, 112), ConvChain.of(24, 32, 32, 80, 80, stride=2, residual=False),
        ConvChain.of(48, 48, 48, 56, 56), ConvChain.of(64, 96, 96, 40, 40, stride=2),
        ConvChain.of(96, 96, 96, 28, 28), ConvChain.of(32, 48, 32, 30, 30, k=5),
        ConvChain.of(160, 160, 160, 14, 14), ConvChain.of(192, 256, 256, 14, 14, stride=2),
        ConvChain.of(384, 384, 384, 7, 7),
    ),
    "fused_" + BOTTLENECK_KIND: (
        ConvChain.of(64, 16, 64, 80, 80, bottleneck=True), ConvChain.of(128, 32, 128, 56, 56, bottleneck=True),
        ConvChain.of(96, 48, 192, 48, 48, stride=2, bottleneck=True), ConvChain.of(256, 64, 256, 28, 28, bottleneck=True),
        ConvChain.of(384, 96, 384, 20, 20, bottleneck=True), ConvChain.of(512, 128, 512, 14, 14, bottleneck=True),
        ConvChain.of(512, 192, 768, 14, 14, stride=2, bottleneck=True),
        ConvChain.of(1024, 256, 1024, 7, 7, bottleneck=True),
    ),
}


def _fused_builder(key: str):
    return build_fused_mlp if key == MLP_KEY else build_fused_chain if key in CHAIN_SHAPES else build_fused


def calibrate_fused(profile: MachineProfile, target: Target, *, keys=FUSED_KEYS, blocks=None,
                    progress: Callable[[str], None] | None = None) -> MachineProfile:
    """The profile with the fused kernels' coefficients (cost/fused.py) fitted to their measured times: each
    key of ``keys`` on its generic blocks (``blocks``: {key: blocks} instead)."""
    shapes = {FUSED_KEY: FUSED_SHAPES, MLP_KEY: MLP_SHAPES, **CHAIN_SHAPES, **(blocks or {})}
    coefficients = dict(profile.coefficients)
    for key in keys:
        rows = []
        for block in shapes[key]:
            build = _fused_builder(key)
            seconds = time_interleaved({"fused": build(block, target, cold=True)}, rounds=9)["fused"]
            if progress:
                progress(f"{key} {describe_block(block)} {seconds * 1e3:9.3f} ms")
            rows.append((fused_features(block, profile, target.lanes), seconds))
        features, seconds = (np.array(v) for v in zip(*rows))
        coefficients[key] = fit_coefficients(features, seconds)
    return profile.with_fitted(coefficients, keys)


def describe_block(block) -> str:
    """A block's shape in a line: C->E->O, the depthwise kernel and stride where it has one, the map; a conv
    chain's channels through its convs, each conv's kernel and stride, the map."""
    if isinstance(block, ConvChain):
        convs = block.convs
        channels = "->".join(str(c) for c in (convs[0].in_channels, *(s.out_channels for s in convs)))
        kernels = " ".join(f"k{s.kernel[0]}" + (f"s{s.stride[0]}" if s.stride[0] > 1 else "") for s in convs)
        return f"{channels} {kernels} @{convs[0].height}x{convs[0].width}"
    e = block.expand
    d = getattr(block, "depthwise", None)
    middle = f" k{d.kernel[0]} s{d.stride[0]}" if d is not None else ""
    mixer = getattr(block, "mixer", None)
    head = ("" if mixer is None else f"dw k{mixer.kernel[0]} + norm, " if block.norm else
            f"mixer k{mixer.kernel[0]} (split, dw, cat), ")
    return f"{head}{e.in_channels}->{e.out_channels}->{block.out_channels}{middle} @{e.height}x{e.width}"
