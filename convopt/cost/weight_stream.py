"""How fast a conv kernel reads weights that no cache holds: the profile's ``stream_bandwidth``.

In a model whose packed weights exceed the last-level cache, every conv reads its weights from memory on
every run (cost/model.py: ``weight_stream_seconds``, which select_lowering adds to a kernel's time alone).
A copy's bandwidth overstates how fast a conv kernel streams them: it reads its weights a slab at a time
between bursts of FMAs, with less memory-level parallelism than a copy. On the AMD Zen 5 here (copy 89 GB/s),
a 192->192 3x3 conv at 14x14 took, alone with hot weights / cycling through 16 copies of its weights:
F(4,3) 126 / 235 us (5.3 MB of transformed weights: 49 GB/s), F(2,3) 127 / 174 us (2.4 MB: 50 GB/s), direct
235 / 244 us (1.3 MB, mostly hidden behind its longer compute); in repvgg_a0 the thirteen such convs ran
F(4,3) at 250-270 us each, F(2,3) at 174. At the copy's bandwidth the model charged F(4,3) 60 us for its
weights instead of 110, and chose it.

    penalty(l, s) = weights(l, s) / stream_bandwidth

``measure_weight_stream`` times each case of ``STREAM_CASES`` (lowerings whose weights outweigh their compute)
with hot weights and cycling through enough copies of its weights to exceed the L3 twice, interleaved;
``fit_stream_bandwidth`` fits the one rate (least squares on the penalties, through the origin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..schedules.conv_spec import ConvSpec
from ..schedules.kernel import build_kernel
from ..target import Target
from .model import packed_weight_bytes
from .profile import MachineProfile

# a fitted rate is kept within these fractions of the copy's bandwidth (a noisy run's penalties can be near
# zero or negative)
STREAM_FRACTION_MIN, STREAM_FRACTION_MAX = 0.05, 2.0
MAX_COPIES_BYTES = 512 << 20  # all copies of one case's weights together


def _conv3x3(channels: int, size: int) -> ConvSpec:
    return ConvSpec(1, channels, size, size, channels, (3, 3), (1, 1), (1, 1), (1, 1), 1)


# generic shapes (no dev model's layer) whose transformed weights take as long to stream as the conv to compute
STREAM_CASES: tuple[tuple[ConvSpec, str], ...] = (
    (_conv3x3(160, 12), "winograd4"), (_conv3x3(160, 12), "winograd2"), (_conv3x3(320, 8), "winograd4"),
    (_conv3x3(320, 8), "winograd2"),
)


@dataclass(frozen=True)
class StreamPoint:
    spec: ConvSpec
    lowering: str
    weight_bytes: float
    hot_seconds: float  # its weights cached from the call before
    cold_seconds: float  # its weights from memory

    def describe(self) -> str:
        return (f"{self.lowering:10s} {self.spec.describe():32s} {self.weight_bytes / 1e6:6.2f} MB  hot "
                f"{self.hot_seconds * 1e6:7.1f} us  from memory {self.cold_seconds * 1e6:7.1f} us")


def weight_copies(weight_bytes: float, target: Target) -> int | None:
    """Copies of a kernel's weights that together exceed the last-level cache twice over; None when that
    takes more than ``MAX_COPIES_BYTES`` (a small case on a machine with a huge L3: not measured)."""
    l3, size = target.caches.get("L3", 32 << 20), max(int(weight_bytes), 1)
    copies = max(2, -(-2 * l3 // size))
    return copies if copies * size <= MAX_COPIES_BYTES else None


def measure_weight_stream(target: Target, cases=STREAM_CASES, rounds: int = 9) -> list[StreamPoint]:
    """Each case timed with hot weights and with its weights from memory (blocked tensors, as between convs
    in a model), interleaved (``calibrate.time_interleaved``)."""
    from .calibrate import time_interleaved

    gen = torch.Generator().manual_seed(0)
    calls, sizes = {}, {}
    for spec, name in cases:
        size = packed_weight_bytes(name, spec, target.lanes)
        copies = weight_copies(size, target)
        if copies is None:
            continue  # its copies would stay in the L3: no penalty to see
        x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=gen)
        w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=gen) / 9
        kernel = build_kernel(name, spec, w, torch.randn(spec.out_channels, generator=gen), target=target,
                              activation="relu", in_block=target.lanes, out_block=target.lanes)
        sizes[spec, name] = size
        calls[spec, name, "hot"] = kernel.bound(x)
        calls[spec, name, "cold"] = kernel.bound(x, weight_copies=copies)
    seconds = time_interleaved(calls, rounds) if calls else {}
    return [StreamPoint(spec, name, sizes[spec, name], seconds[spec, name, "hot"], seconds[spec, name, "cold"])
            for spec, name in cases if (spec, name) in sizes]


def fit_stream_bandwidth(points: list[StreamPoint], bandwidth: float) -> float:
    """Bytes/s at which the points' weights streamed: penalty = bytes / rate, fitted through the origin, kept
    within [STREAM_FRACTION_MIN, STREAM_FRACTION_MAX] x ``bandwidth`` (the copy's)."""
    squares = sum(p.weight_bytes ** 2 for p in points)
    weighted = sum(p.weight_bytes * (p.cold_seconds - p.hot_seconds) for p in points)
    rate = squares / weighted if weighted > 0 else float("inf")
    return min(STREAM_FRACTION_MAX * bandwidth, max(STREAM_FRACTION_MIN * bandwidth, rate))


def calibrate_weight_stream(profile: MachineProfile, target: Target, cases=None,
                            progress: Callable[[str], None] | None = None) -> MachineProfile:
    """``profile`` with ``stream_bandwidth`` measured on this machine (marked as fitted here); ``cases``:
    default ``STREAM_CASES``. Where no case's weights outgrow the L3 (within ``MAX_COPIES_BYTES``), ``profile``
    as it was, said through ``progress``: a full calibration on such a machine still ends with its profile."""
    points = measure_weight_stream(target, STREAM_CASES if cases is None else cases)
    if not points:
        if progress:
            progress(f"weight streaming not measured: no case's weights outgrow this machine's L3 "
                     f"({target.caches.get('L3')} bytes) within {MAX_COPIES_BYTES >> 20} MB of copies")
        return profile
    rate = fit_stream_bandwidth(points, profile.bandwidth)
    if progress:
        for point in points:
            progress(point.describe())
        progress(f"weights streamed from memory at {rate / 1e9:.1f} GB/s (a copy: {profile.bandwidth / 1e9:.1f} GB/s)")
    return profile.with_fitted(profile.coefficients, ["stream_bandwidth"], stream_bandwidth=rate)
