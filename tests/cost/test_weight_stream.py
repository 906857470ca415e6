"""cost/weight_stream.py: the rate at which conv kernels read weights no cache holds, and the profile's use of it."""

from dataclasses import replace

import pytest
import torch

from convopt.cost import weight_stream as ws
from convopt.cost.model import packed_weight_bytes, weight_stream_seconds
from convopt.cost.profile import MachineProfile
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import build_kernel
from convopt.target import host_target

from .profiles import fixed_profile

SMALL = ConvSpec(1, 32, 8, 8, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1)


def _point(megabytes: float, hot_us: float, cold_us: float) -> ws.StreamPoint:
    return ws.StreamPoint(SMALL, "winograd4", megabytes * 1e6, hot_us * 1e-6, cold_us * 1e-6)


def test_the_fit_is_the_rate_of_the_penalties_through_the_origin():
    points = [_point(5.0, 100, 200), _point(2.0, 100, 140)]  # 5 MB in 100 us, 2 MB in 40 us: 50 GB/s
    assert ws.fit_stream_bandwidth(points, 89e9) == pytest.approx(50e9)
    mixed = [_point(4.0, 100, 200), _point(4.0, 100, 300)]  # 40 and 20 GB/s: penalties fitted, not rates averaged
    assert ws.fit_stream_bandwidth(mixed, 89e9) == pytest.approx(8e6 / 300e-6)


def test_a_noisy_fit_stays_within_bounds_of_the_copy_bandwidth():
    assert ws.fit_stream_bandwidth([_point(5.0, 100, 90)], 80e9) == ws.STREAM_FRACTION_MAX * 80e9  # no penalty
    assert ws.fit_stream_bandwidth([_point(5.0, 100, 1e6)], 80e9) == ws.STREAM_FRACTION_MIN * 80e9


def test_enough_weight_copies_to_exceed_the_l3_twice_within_a_cap():
    target = replace(host_target(), caches={"L3": 32 << 20})
    assert ws.weight_copies(5.3e6, target) == 13  # 13 x 5.3 MB > 64 MB
    assert ws.weight_copies(1.64e6, target) == 41 and ws.weight_copies(100e6, target) == 2
    huge_l3 = replace(target, caches={"L3": 1 << 30})
    assert ws.weight_copies(1.64e6, huge_l3) is None  # past the cap: it can't outgrow 1 GB


def test_cases_whose_copies_cant_outgrow_the_l3_are_not_measured():
    huge_l3 = replace(host_target(), caches={"L3": 1 << 30})
    assert ws.measure_weight_stream(huge_l3, ((SMALL, "winograd2"),)) == []
    said = []  # a full calibration there still ends with its profile, the rate unmeasured
    profile = ws.calibrate_weight_stream(fixed_profile(), huge_l3, cases=((SMALL, "winograd2"),), progress=said.append)
    assert profile == fixed_profile() and "not measured" in said[0]


def test_weights_stream_at_the_measured_rate_else_at_the_copy_bandwidth():
    profile = fixed_profile()
    assert profile.stream_bandwidth == 0 and profile.weight_bandwidth == profile.bandwidth
    half = replace(profile, stream_bandwidth=profile.bandwidth / 2)
    assert weight_stream_seconds("winograd4", SMALL, half, 8) == pytest.approx(
        2 * weight_stream_seconds("winograd4", SMALL, profile, 8))
    assert weight_stream_seconds("winograd4", SMALL, half, 8) == packed_weight_bytes("winograd4", SMALL, 8) / half.weight_bandwidth
    assert MachineProfile.from_json(half.to_json()).stream_bandwidth == half.stream_bandwidth
    with pytest.raises(ValueError, match="stream_bandwidth"):
        MachineProfile.from_json(replace(profile, stream_bandwidth=-1.0).to_json())


def test_each_call_takes_the_next_copy_of_the_weights_and_computes_the_same():
    target = host_target()
    x, w, b = torch.randn(1, 32, 8, 8), torch.randn(32, 32, 3, 3) / 9, torch.randn(32)
    kernel = build_kernel("winograd2", SMALL, w, b, target=target, activation="relu")
    expected = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
    call = kernel.bound(x, weight_copies=3)
    for _ in range(4):
        call()
        out = torch.from_dlpack(kernel._out)
        assert ((out - expected).abs().max() / expected.abs().max()).item() < 1e-5
    with pytest.raises(ValueError, match="not both"):
        kernel.bound(x, copies=2, weight_copies=2)


def test_calibration_measures_and_marks_the_rate_as_fitted_here():
    """Plumbing (a small case, its copies past an L3 said to be 4 MB, whatever the host's: an Intel host here had
    480 MB; the rate itself is whatever this host gives, clamped)."""
    host = host_target()
    target = replace(host, caches={**host.caches, "L3": 4 << 20})
    profile = ws.calibrate_weight_stream(fixed_profile(), target, cases=((SMALL, "winograd2"),))
    assert "stream_bandwidth" in profile.fitted_here
    assert ws.STREAM_FRACTION_MIN * profile.bandwidth <= profile.stream_bandwidth <= ws.STREAM_FRACTION_MAX * profile.bandwidth
    assert profile.coefficients == fixed_profile().coefficients
