"""The machine profile: measurement, JSON round trip, cache by target key, shipped profiles, corrupt files
rejected."""

import json
import os
import warnings
from dataclasses import replace

import pytest
import tvm

from convopt.cost import peak, profile as prof
from convopt.cost.profile import MachineProfile, load_profile, measure_machine
from convopt.target import resolve_target

from .profiles import fixed_profile

HOST = resolve_target("cpu")


def test_measure_machine_is_plausible():
    p = measure_machine(HOST)
    assert 1e9 < p.peak_flops < 1e14  # a GEMM runs between 1 GFLOP/s and 100 TFLOP/s
    assert 1e8 < p.bandwidth < 1e13
    assert p.cores >= 1 and p.cpu
    assert p.fma_peak_flops > 1e9 and p.roof_flops == p.fma_peak_flops
    if not os.environ.get("CONVOPT_HOST_CPU"):  # the GEMM runs the host's own ISA, the roof the named CPU's
        # the FMA roof: what a GEMM library reaches at best (126-148 vs 230 GFLOP/s on Zen 4), never far above it
        # (both are live timings on a shared machine: a slow phase during the short FMA loop gets a second try)
        fma = p.fma_peak_flops if p.fma_peak_flops > 0.7 * p.peak_flops else peak.fma_peak_flops(HOST)
        assert fma > 0.7 * p.peak_flops


@pytest.mark.parametrize("lanes, register", [(8, "ymm"), (16, "zmm")])
def test_the_fma_roof_loop_keeps_its_chains_in_registers(lanes, register):
    target = resolve_target({"kind": "llvm", "mcpu": "znver4" if lanes == 16 else "znver3"})
    chains = peak.chains_for(target)
    assert chains == {8: 12, 16: 24}[lanes]
    asm = tvm.compile(tvm.IRModule({"main": peak.fma_loop(2, chains, lanes, 1000)}),
                      target=target.tvm).mod.inspect_source("asm")
    fmas = [line for line in asm.splitlines() if "vfmadd" in line]
    assert len(fmas) >= chains and all(register in line for line in fmas)
    assert not [line for line in fmas if "(" in line]  # every operand a register: no spilled accumulator


def test_a_profile_cached_without_the_roof_gets_it_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    prof.save_profile(replace(fixed_profile(), fma_peak_flops=0.0, target_key=HOST.key), prof.profile_path(HOST))
    monkeypatch.setattr(peak, "fma_peak_flops", lambda target: 123e9)
    assert load_profile(HOST).roof_flops == 123e9
    assert MachineProfile.from_json(prof.profile_path(HOST).read_text()).fma_peak_flops == 123e9


def test_json_round_trip():
    p = fixed_profile()
    assert MachineProfile.from_json(p.to_json()) == p


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("format"),
    lambda d: d.update(peak_flops=-1.0),
    lambda d: d["coefficients"]["direct"].update(flops=float("nan")),
    lambda d: d["coefficients"]["direct"].update(warp_speed=1.0),
    lambda d: d.pop("bandwidth"),
    lambda d: d.update(fma_peak_flops=float("nan")),
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
    monkeypatch.setattr(prof, "measure_machine", lambda target: calls.append(1) or fixed_profile())
    first = load_profile(HOST)
    second = load_profile(HOST)
    assert len(calls) == 1 and first == second
    assert prof.profile_path(HOST).is_file() and HOST.key in prof.profile_path(HOST).name
    # the shipped coefficients cover every lowering until a local calibration replaces them
    assert first.coefficients == prof.nearest_shipped(HOST).coefficients


def test_shipped_profiles_are_valid_complete_and_named_by_their_key():
    from convopt.cost.calibrate import all_variants
    from convopt.cost.fused import KEYS as FUSED_KEYS  # the fused block kernels (cost/fused.py)
    from convopt.schedules.lowerings import LOWERINGS

    shipped = prof.shipped_profiles()
    assert shipped
    for key, profile in shipped.items():
        # a lowering added after a machine was calibrated has no coefficients there: it is no candidate on
        # that target until `convopt calibrate` runs (test_model.py::test_uncalibrated_lowering_is_not_a_candidate)
        assert set(profile.coefficients) <= {*all_variants(), *FUSED_KEYS} and "direct" in profile.coefficients
        assert profile.calibrated_on and profile.target_key == key
    assert any(set(p.coefficients) >= set(LOWERINGS) for p in shipped.values())


def test_a_cached_profile_keeps_what_was_fitted_here_and_takes_the_rest_from_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    shipped = prof.nearest_shipped(HOST).coefficients
    new = "winograd4"  # as if convopt had shipped its coefficients after this cache was written
    old = fixed_profile()
    del old.coefficients[new]
    old = old.with_fitted({**old.coefficients, "direct": {"flops": 9.0}}, ["direct"])  # a local calibration
    old.coefficients["im2win"] = {"flops": 7.0}  # a copy of an older convopt's shipped fit (its kernel changed)
    prof.save_profile(old, prof.profile_path(HOST))
    loaded = load_profile(HOST)
    assert loaded.coefficients["direct"] == {"flops": 9.0}  # what this machine measured wins
    assert loaded.coefficients[new] == shipped[new]
    assert loaded.coefficients["im2win"] == shipped["im2win"]  # the stale copy is replaced
    assert loaded.fitted_here == ("direct",) and load_profile(HOST).fitted_here == ("direct",)  # round trip


AVX2_ZEN3 = resolve_target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2})
AVX512_OTHER = resolve_target({"kind": "llvm", "mcpu": "icelake-server", "num-cores": 2})


def test_a_shipped_key_is_used_as_it_is():
    assert prof.nearest_shipped(AVX2_ZEN3).target_key == AVX2_ZEN3.key == "llvm-znver3-avx2-2c"


def test_a_target_without_a_shipped_profile_gets_the_nearest_with_a_warning_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prof, "measure_machine", lambda target: fixed_profile())
    monkeypatch.setattr(prof, "_warned", set())
    nearest = prof.nearest_shipped(AVX512_OTHER)
    same_isa = [p for p in prof.shipped_profiles().values() if "-avx512-" in p.target_key]
    assert nearest.target_key != AVX512_OTHER.key and (not same_isa or "-avx512-" in nearest.target_key)
    with pytest.warns(UserWarning, match=f"no profile for target {AVX512_OTHER.key}.*convopt calibrate"):
        profile = load_profile(AVX512_OTHER, refresh=True)
    assert profile.coefficients == nearest.coefficients
    assert profile.peak_flops == fixed_profile().peak_flops  # this machine's measured peak scales them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_profile(AVX512_OTHER, refresh=True)  # said once


def test_the_weight_stream_rate_comes_from_here_else_from_the_shipped_profile_of_this_very_target(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    shipped = prof.nearest_shipped(HOST)
    prof.save_profile(fixed_profile(), prof.profile_path(HOST))
    expected = shipped.stream_bandwidth if shipped.target_key == HOST.key else 0.0
    assert load_profile(HOST).stream_bandwidth == expected
    measured_here = fixed_profile().with_fitted(fixed_profile().coefficients, ["stream_bandwidth"],
                                                stream_bandwidth=12.5e9)
    prof.save_profile(measured_here, prof.profile_path(HOST))
    assert load_profile(HOST).stream_bandwidth == 12.5e9 and load_profile(HOST).weight_bandwidth == 12.5e9
    assert any(p.stream_bandwidth > 0 for p in prof.shipped_profiles().values())  # measured on one machine at least


def test_the_shipped_profile_of_this_very_key_keeps_the_units_its_coefficients_were_fitted_in(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    shipped = prof.shipped_profiles()[AVX2_ZEN3.key]
    busy = replace(fixed_profile(), peak_flops=shipped.peak_flops / 3, bandwidth=shipped.bandwidth / 2,
                   target_key=AVX2_ZEN3.key)  # a cache written while the machine was busy
    prof.save_profile(busy, prof.profile_path(AVX2_ZEN3))
    loaded = load_profile(AVX2_ZEN3)
    assert (loaded.peak_flops, loaded.bandwidth) == (shipped.peak_flops, shipped.bandwidth)
    assert loaded.coefficients == shipped.coefficients
    assert load_profile(AVX2_ZEN3, measured_here=True).peak_flops == busy.peak_flops  # a roofline of this machine
    # coefficients fitted here are in this machine's own units: its measurements stay
    prof.save_profile(busy.with_fitted({**busy.coefficients, "direct": {"flops": 2.0}}, ["direct"]),
                      prof.profile_path(AVX2_ZEN3))
    assert load_profile(AVX2_ZEN3).peak_flops == shipped.peak_flops / 3
    # another key's coefficients: scaled by this machine's measurements (the nearest-profile test above)
    prof.save_profile(replace(busy, target_key=AVX512_OTHER.key), prof.profile_path(AVX512_OTHER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_profile(AVX512_OTHER).peak_flops == shipped.peak_flops / 3
