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
    measured = [(ConvSpec.from_key(r["spec"]), r["seconds"]) for r in records if r["lowering"] == "direct@blocked"]
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


def test_earlier_measurements_join_and_missing_only_measures_what_they_lack(monkeypatch):
    """A partial calibration (a shape added, one lowering re-measured) fits over the earlier measurements
    too: a new measurement replaces the earlier one of its (shape, variant), the others stay."""
    import convopt.cost.calibrate as cal

    asked = []

    def measure(spec, names, target):
        asked.append((spec, tuple(names)))
        return {name: 1e-3 for name in names}

    monkeypatch.setattr(cal, "measure", measure)
    host = resolve_target("cpu").with_lanes(8)
    earlier = [(SHAPES[0], "direct", 5e-3), (SHAPES[0], "im2win", 7e-3)]
    _, records = calibrate(fixed_profile(), host, shapes=SHAPES, lowerings=["direct", "im2win"], earlier=earlier,
                           missing_only=True)
    assert asked == [(SHAPES[1], ("direct", "im2win"))]  # the first shape was measured before
    seconds = {(r["spec"], r["lowering"]): r["seconds"] for r in records}
    assert seconds == {(SHAPES[0].key(), "direct"): 5e-3, (SHAPES[0].key(), "im2win"): 7e-3,
                       (SHAPES[1].key(), "direct"): 1e-3, (SHAPES[1].key(), "im2win"): 1e-3}
    asked.clear()
    profile, records = calibrate(fixed_profile(), host, shapes=SHAPES, lowerings=["direct"], earlier=earlier)
    assert asked == [(SHAPES[0], ("direct",)), (SHAPES[1], ("direct",))]  # all shapes: re-measured
    seconds = {(r["spec"], r["lowering"]): r["seconds"] for r in records}
    assert seconds[SHAPES[0].key(), "direct"] == 1e-3 and seconds[SHAPES[0].key(), "im2win"] == 7e-3
    # the earlier im2win point is fitted too: its coefficients predict it (one point, a perfect fit)
    assert cal.predict("im2win", SHAPES[0], profile, 8) == pytest.approx(7e-3, rel=1e-6)


def test_stored_measurements_refit_to_the_same_coefficients(tmp_path):
    from convopt.cost.calibrate import fit_measured, load_measurements, measurements_path, profile_beside, save_measurements

    target = resolve_target("cpu").with_lanes(8)
    profile, records = calibrate(fixed_profile(), target, shapes=SHAPES, lowerings=["direct", "direct@blocked"])
    where = measurements_path(tmp_path / "llvm-x-avx2-2c.json")
    assert where.parent.name == "measurements" and profile_beside(where) == tmp_path / "llvm-x-avx2-2c.json"
    save_measurements(records, target, where)
    key, lanes, points = load_measurements(where)
    assert key == target.key and lanes == 8 and len(points) == len(records) == 4
    refitted = fit_measured(fixed_profile(), lanes, points)
    assert refitted.coefficients["direct"] == pytest.approx(profile.coefficients["direct"], rel=1e-9)
    assert refitted.coefficients["direct@blocked"] == pytest.approx(profile.coefficients["direct@blocked"], rel=1e-9)
    assert refitted.coefficients["im2win"] == fixed_profile().coefficients["im2win"]  # not measured: kept


@pytest.mark.parametrize("text, reason", [
    ("{", "unusable"),
    ('{"format": "something-else", "target": "k", "lanes": 8, "measurements": []}', "not a convopt"),
    ('{"format": "convopt-calibration-measurements-1", "target": "k", "lanes": 8, "measurements": '
     '[{"lowering": "nosuch", "spec": "n1 c16 12x12 o16 k3x3 s1x1 p1x1 d1x1 g1", "seconds": 1e-4}]}', "nosuch"),
    ('{"format": "convopt-calibration-measurements-1", "target": "k", "lanes": 8, "measurements": '
     '[{"lowering": "direct", "spec": "n1 c16 12x12 o16 k3x3 s1x1 p1x1 d1x1 g1", "seconds": -1}]}', "non-positive"),
    ('{"format": "convopt-calibration-measurements-1", "target": "k", "lanes": 8, "measurements": '
     '[{"lowering": "direct", "spec": "3x3 conv", "seconds": 1e-4}]}', "not a conv spec key"),
])
def test_corrupt_measurements_are_refused_naming_the_file(tmp_path, text, reason):
    from convopt.cost.calibrate import load_measurements

    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason) as error:
        load_measurements(path)
    assert str(path) in str(error.value)


def test_every_shipped_profile_refits_from_its_measurements_within_their_rounding():
    """The shipped measurements belong to their profiles: refitting gives coefficients that predict what the
    profile predicts, within the 1 us rounding some were stored with."""
    from convopt.cost.calibrate import fit_measured, load_measurements, profile_beside
    from convopt.cost.model import predict
    from convopt.cost.profile import SHIPPED_PROFILES, MachineProfile

    stored = sorted((SHIPPED_PROFILES / "measurements").glob("*.json"))
    assert stored, "no shipped measurements"
    for path in stored:
        key, lanes, points = load_measurements(path)
        profile = MachineProfile.from_json(profile_beside(path).read_text())
        assert profile.target_key == key
        refitted = fit_measured(profile, lanes, points)
        for spec, name, _ in points:
            base, blocked = name.removesuffix("@blocked"), name.endswith("@blocked")
            assert predict(base, spec, refitted, lanes, blocked) == pytest.approx(
                predict(base, spec, profile, lanes, blocked), rel=0.15), (path.name, name, spec.describe())


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



def test_repeated_counts_calls_from_the_fastest_window_not_a_slow_first_call():
    import time

    from convopt.cost.calibrate import repeated

    calls = []

    def kernel():  # its first two calls (a kernel just built: page faults, a cold pool) take 3 ms, then 20 us
        calls.append(None)
        end = time.perf_counter() + (3e-3 if len(calls) <= 2 else 2e-5)
        while time.perf_counter() < end:
            pass

    run, count = repeated(kernel, seconds=0.005)
    assert count >= 10  # 5 ms of 20 us calls: ~250 (fewer on a busy machine), never the 1 of the slow first window
    before = len(calls)
    run()
    assert len(calls) - before == count
