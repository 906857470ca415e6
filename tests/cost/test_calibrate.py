"""Calibration: lowerings and their "@blocked" variants measured and fitted on a few small shapes."""

import numpy as np
import pytest

from convopt.cost.calibrate import calibrate
from convopt.cost.model import feature_vector, fit_scale
from convopt.cost.profile import FEATURES
from convopt.schedules.conv_spec import ConvSpec
from convopt.target import resolve_target

from .profiles import fixed_profile

SHAPES = [ConvSpec(1, 16, 12, 12, 16, (3, 3), padding=(1, 1)), ConvSpec(1, 16, 10, 10, 32, (1, 1))]


def test_a_blocked_variant_is_its_lowering_scaled_by_one_factor():
    host = resolve_target("cpu").with_lanes(8)
    profile, records = calibrate(fixed_profile(), host, shapes=SHAPES, lowerings=["direct@blocked", "direct"])
    assert {r["lowering"] for r in records} == {"direct", "direct@blocked"} and len(records) == 4
    assert all(r["seconds"] > 0 for r in records)
    base, blocked = profile.coefficients["direct"], profile.coefficients["direct@blocked"]
    scales = [blocked[f] / base[f] for f in base if base[f] > 0]  # one factor, up to float rounding
    assert max(scales) - min(scales) <= 1e-12 * max(scales) and scales[0] > 0
    # the factor is the least-squares one between the NCHW prediction and the blocked measurements (its
    # size comes from timings of tiny shapes taken beside other tests, so no bound on it is asserted)
    specs = {s.describe(): s for s in SHAPES}
    measured = [(specs[r["spec"]], r["seconds"]) for r in records if r["lowering"] == "direct@blocked"]
    weights = np.array([base.get(f, 0.0) for f in FEATURES])
    predicted = np.array([feature_vector("direct", s, fixed_profile(), 8) @ weights for s, _ in measured])
    assert scales[0] == pytest.approx(fit_scale(predicted, np.array([t for _, t in measured])), rel=1e-9)
    assert profile.coefficients["fft"] == fixed_profile().coefficients["fft"]  # not calibrated: kept


def test_a_blocked_variant_needs_its_lowering_calibrated():
    profile = fixed_profile()
    del profile.coefficients["direct"]
    with pytest.raises(ValueError, match="calibrate direct"):
        calibrate(profile, resolve_target("cpu").with_lanes(8), shapes=SHAPES[:1], lowerings=["direct@blocked"])


def test_refit_from_measurements_scales_each_variant_to_its_points():
    from convopt.cost.calibrate import refit_from_measurements
    from convopt.cost.model import predict

    profile = fixed_profile()
    specs = [ConvSpec(1, c, 28, 28, c, (3, 3), padding=(1, 1)) for c in (16, 32, 48, 64)]
    # direct measured 2x slower than predicted, im2win as predicted, im2col only twice (too few to refit)
    points = [(s, "direct", 2 * predict("direct", s, profile, 16)) for s in specs]
    points += [(s, "im2win", predict("im2win", s, profile, 16)) for s in specs]
    points += [(s, "im2col", 0.1 * predict("im2col", s, profile, 16)) for s in specs[:2]]
    refitted, report = refit_from_measurements(profile, 16, points)
    scales = {r.variant: r.scale for r in report.refits}
    assert scales["direct"] == pytest.approx(2.0) and scales["im2win"] == pytest.approx(1.0)
    assert scales["im2col"] == 1.0 and refitted.coefficients["im2col"] == profile.coefficients["im2col"]
    direct = {r.variant: r for r in report.refits}["direct"]
    assert direct.error_before == pytest.approx(0.5) and direct.error_after == pytest.approx(0.0, abs=1e-9)
    for s in specs:
        assert predict("direct", s, refitted, 16) == pytest.approx(2 * predict("direct", s, profile, 16))
    assert profile.coefficients["direct"] == fixed_profile().coefficients["direct"]  # input not mutated
    assert report.shapes == 4 and "hit rate" in report.table()
    assert report.hit_rate_after >= report.hit_rate_before


def test_refit_of_a_blocked_variant_without_coefficients_starts_from_the_nchw_ones():
    from convopt.cost.calibrate import refit_from_measurements
    from convopt.cost.model import predict

    profile = fixed_profile()
    specs = [ConvSpec(1, c, 14, 14, c, (3, 3), padding=(1, 1)) for c in (16, 32, 64)]
    points = [(s, "direct@blocked", 0.5 * predict("direct", s, profile, 16)) for s in specs]
    refitted, _ = refit_from_measurements(profile, 16, points)
    assert "direct@blocked" not in profile.coefficients
    assert refitted.coefficients["direct@blocked"]["flops"] == pytest.approx(0.5 * profile.coefficients["direct"]["flops"])
    assert refitted.coefficients["direct"] == profile.coefficients["direct"]


def test_passes_keep_each_measurements_fastest(monkeypatch):
    import convopt.cost.calibrate as cal

    sweeps = iter([{"direct": 3e-3}, {"direct": 1e-3}, {"direct": 2e-3}])  # a slow phase, then a quiet one
    monkeypatch.setattr(cal, "measure", lambda spec, names, target: next(sweeps))
    _, records = calibrate(fixed_profile(), resolve_target("cpu").with_lanes(8), shapes=SHAPES[:1],
                           lowerings=["direct"], passes=3)
    assert [r["seconds"] for r in records] == [1e-3]


def test_cold_copies_exceed_the_cores_l2():
    from convopt.schedules.kernel import cold_copies

    host = resolve_target("cpu")
    l2 = host.caches.get("L2", 1 << 20) * host.cores
    small = 2 * l2 // 64  # the smallest footprint the bound of 64 copies still covers (64 KB with 2 MB L2s)
    assert cold_copies(small, host) * small >= 2 * l2 and cold_copies(small, host) > 8  # it cycles through many copies
    assert cold_copies(8 * l2, host) == 1  # a large one leaves the cache by itself
    assert cold_copies(1, host) == 64  # bounded


def test_a_kernel_bound_to_copies_computes_the_same():
    import torch

    from convopt.schedules.kernel import build_kernel

    spec = SHAPES[0]
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 16, 12, 12, generator=gen), torch.randn(16, 16, 3, 3, generator=gen)
    kernel = build_kernel("direct", spec, w, None, target=resolve_target("cpu").with_lanes(8), in_block=8,
                          out_block=8)
    expected = kernel(x)
    call = kernel.bound(x, copies=3)
    for _ in range(4):
        call()
    assert kernel.footprint_bytes() == 4 * (16 * 12 * 12 + 16 * 12 * 12)
    assert torch.equal(kernel(x), expected)  # the copies are other buffers: the kernel's own is untouched

