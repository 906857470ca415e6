"""Calibration: build and time every lowering on a set of conv shapes and fit the cost model's
coefficients to the measurements (``convopt calibrate``).

The shapes are generic (dense, pointwise, strided, grouped, depthwise, large kernels, at the map
sizes of ImageNet CNNs) and deliberately not the layers of the models the cost model is judged on
(benchmarks/lowerings.py), so that judgement measures how the model generalizes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
import torch

from ..schedules.conv_spec import ConvSpec
from ..schedules.lowerings import LOWERINGS, build_kernel, lowering
from .model import feature_vector, fit_coefficients
from .profile import MachineProfile


def _conv(c, o, k, hw, stride=1, groups=1, dilation=1) -> ConvSpec:
    pad = dilation * (k // 2)
    return ConvSpec(1, c, hw, hw, o, (k, k), (stride, stride), (pad, pad), (dilation, dilation), groups)


CALIBRATION_SHAPES: tuple[ConvSpec, ...] = (
    # dense 3x3, stride 1 and 2
    _conv(32, 32, 3, 112), _conv(96, 96, 3, 28), _conv(192, 192, 3, 14), _conv(384, 384, 3, 7),
    _conv(48, 80, 3, 40), _conv(32, 64, 3, 112, stride=2), _conv(160, 320, 3, 28, stride=2),
    _conv(3, 24, 3, 224, stride=2), _conv(16, 16, 3, 64, dilation=2),
    # pointwise
    _conv(32, 96, 1, 112), _conv(96, 24, 1, 56), _conv(320, 1280, 1, 7), _conv(512, 128, 1, 28),
    _conv(48, 192, 1, 28), _conv(384, 96, 1, 14), _conv(256, 512, 1, 28, stride=2),
    # grouped
    _conv(64, 64, 3, 56, groups=4), _conv(128, 128, 3, 28, groups=16, stride=2),
    # depthwise, small to large kernels
    _conv(32, 32, 3, 112, groups=32), _conv(240, 240, 3, 28, groups=240), _conv(672, 672, 5, 14, groups=672),
    _conv(96, 96, 3, 112, stride=2, groups=96), _conv(96, 96, 7, 56, groups=96), _conv(64, 64, 21, 32, groups=64),
    _conv(192, 192, 17, 16, groups=192), _conv(48, 48, 27, 48, groups=48),
    # dense large kernels
    _conv(3, 32, 7, 224, stride=2), _conv(16, 32, 5, 56), _conv(32, 32, 9, 28),
)


def measure(name: str, spec: ConvSpec, *, repeat: int = 5, seed: int = 0) -> float:
    """Seconds per call of lowering ``name`` on ``spec``: median of ``repeat`` timed runs (host CPU)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=gen)
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=gen)
    kernel = build_kernel(name, spec, w, torch.randn(spec.out_channels, generator=gen), activation="relu")
    return kernel.time(x, repeat=repeat)


def calibrate(profile: MachineProfile, *, shapes: Iterable[ConvSpec] = CALIBRATION_SHAPES,
              lowerings: Iterable[str] = LOWERINGS, lanes: int = 8,
              progress: Callable[[str], None] | None = None) -> tuple[MachineProfile, list[dict]]:
    """(profile with fitted coefficients, one measurement record per (lowering, shape))."""
    records, coefficients = [], dict(profile.coefficients)
    shapes = list(shapes)
    for name in lowerings:
        rows, seconds = [], []
        for spec in shapes:
            if lowering(name).supports(spec) is not None:
                continue
            t = measure(name, spec)
            if progress:
                progress(f"{name:10s} {spec.describe():32s} {t * 1e3:9.3f} ms")
            rows.append(feature_vector(name, spec, profile, lanes))
            seconds.append(t)
            records.append({"lowering": name, "spec": spec.describe(), "seconds": t})
        if rows:
            coefficients[name] = fit_coefficients(np.array(rows), np.array(seconds))
    return replace(profile, coefficients=coefficients, calibrated_on=profile.cpu), records
