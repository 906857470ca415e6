"""Calibration: lowerings and their "@blocked" variants measured and fitted on a few small shapes."""

import pytest

from convopt.cost.calibrate import calibrate
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
    scales = {blocked[f] / base[f] for f in base if base[f] > 0}
    assert len(scales) == 1 and 0.2 < scales.pop() < 5
    assert profile.coefficients["fft"] == fixed_profile().coefficients["fft"]  # not calibrated: kept


def test_a_blocked_variant_needs_its_lowering_calibrated():
    profile = fixed_profile()
    del profile.coefficients["direct"]
    with pytest.raises(ValueError, match="calibrate direct"):
        calibrate(profile, resolve_target("cpu").with_lanes(8), shapes=SHAPES[:1], lowerings=["direct@blocked"])
