"""The machine profile: measurement, JSON round trip, cache, corrupt files rejected."""

import json

import pytest

from convopt.cost import profile as prof
from convopt.cost.profile import MachineProfile, load_profile, measure_machine

from .profiles import fixed_profile


def test_measure_machine_is_plausible():
    p = measure_machine()
    assert 1e9 < p.peak_flops < 1e14  # a GEMM runs between 1 GFLOP/s and 100 TFLOP/s
    assert 1e8 < p.bandwidth < 1e13
    assert p.cores >= 1 and p.cpu


def test_json_round_trip():
    p = fixed_profile()
    assert MachineProfile.from_json(p.to_json()) == p


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("format"),
    lambda d: d.update(peak_flops=-1.0),
    lambda d: d["coefficients"]["direct"].update(flops=float("nan")),
    lambda d: d["coefficients"]["direct"].update(warp_speed=1.0),
    lambda d: d.pop("bandwidth"),
])
def test_corrupt_profile_is_rejected(damage):
    data = json.loads(fixed_profile().to_json())
    damage(data)
    with pytest.raises(ValueError, match="corrupt machine profile"):
        MachineProfile.from_json(json.dumps(data), "x.json")


def test_truncated_file_is_rejected():
    with pytest.raises(ValueError, match="corrupt machine profile"):
        MachineProfile.from_json(fixed_profile().to_json()[:100], "x.json")


def test_load_profile_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    calls = []
    real = prof.measure_machine
    monkeypatch.setattr(prof, "measure_machine", lambda: calls.append(1) or real())
    first = load_profile()
    second = load_profile()
    assert len(calls) == 1 and first == second
    assert prof.profile_path().is_file()
    # the shipped coefficients cover every lowering until a local calibration replaces them
    shipped, _ = prof.default_coefficients()
    assert first.coefficients == shipped


def test_shipped_profile_is_valid_and_complete():
    from convopt.schedules.lowerings import LOWERINGS

    coefficients, machine = prof.default_coefficients()
    assert set(coefficients) == set(LOWERINGS) and machine
