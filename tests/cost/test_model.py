"""The cost model: coefficient fitting, predictions, candidates."""

import numpy as np
import pytest

from convopt.cost.model import fit_coefficients, predict, predict_all
from convopt.cost.profile import FEATURES
from convopt.schedules.conv_spec import ConvSpec

from .profiles import fixed_profile


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    features = rng.uniform(1e-5, 1e-3, size=(30, len(FEATURES)))
    truth = np.array([1.3, 3.0, 1.7, 0.0, 0.7, 2.0, 0.4, 4.0])
    seconds = features @ truth
    fitted = fit_coefficients(features, seconds)
    assert np.allclose([fitted[f] for f in FEATURES], truth, rtol=1e-6, atol=1e-9)


def test_fit_never_gives_negative_coefficients():
    rng = np.random.default_rng(1)
    features = rng.uniform(1e-5, 1e-3, size=(20, len(FEATURES)))
    seconds = features @ np.array([1.0, -2.0, 0.3, 0.5, 1.0, 0.5, 0.2, 1.0]) + 1e-2
    assert min(fit_coefficients(features, seconds).values()) >= 0


def test_predict_is_linear_in_the_coefficients():
    spec = ConvSpec(1, 64, 56, 56, 64, (3, 3), padding=(1, 1))
    one = predict("direct", spec, fixed_profile(direct={"flops": 1.0}), 8)
    two = predict("direct", spec, fixed_profile(direct={"flops": 2.0}), 8)
    assert two == pytest.approx(2 * one)
    assert one == pytest.approx(2 * spec.macs / 100e9)  # flops at peak


def test_candidates_are_the_lowerings_that_run_the_conv():
    profile = fixed_profile()
    dense3 = predict_all(ConvSpec(1, 16, 20, 20, 16, (3, 3), padding=(1, 1)), profile, 8)
    assert {"direct", "im2col", "im2win", "winograd2", "winograd4", "fft"} <= set(dense3)
    strided = predict_all(ConvSpec(1, 16, 20, 20, 16, (3, 3), stride=(2, 2), padding=(1, 1)), profile, 8)
    assert "winograd4" not in strided and "winograd2" not in strided and "direct" in strided


def test_uncalibrated_lowering_is_not_a_candidate():
    profile = fixed_profile()
    del profile.coefficients["fft"]
    assert "fft" not in predict_all(ConvSpec(1, 8, 16, 16, 8, (7, 7), padding=(3, 3), groups=8), profile, 8)
    with pytest.raises(KeyError, match="convopt calibrate"):
        predict("fft", ConvSpec(1, 8, 16, 16, 8, (7, 7), padding=(3, 3), groups=8), profile, 8)


def test_blocked_neighbours_use_the_blocked_coefficients_and_charge_the_others_a_relayout():
    from convopt.cost.model import relayout_seconds

    spec = ConvSpec(1, 32, 28, 28, 32, (3, 3), padding=(1, 1), groups=32)  # depthwise
    profile = fixed_profile()
    plain = predict_all(spec, profile, 16)
    assert predict_all(spec, profile, 16, blocked=True)["depthwise"] == plain["depthwise"]  # no @blocked fit yet
    profile.coefficients["depthwise@blocked"] = {"flops": 0.5}
    blocked = predict_all(spec, profile, 16, blocked=True)
    assert blocked["depthwise"] == pytest.approx(predict("depthwise", spec, profile, 16, blocked=True))
    assert blocked["depthwise"] < plain["depthwise"]
    # direct and im2col vectorize a depthwise conv over pixels: between blocked neighbours they pay the relayout
    for name in ("direct", "im2col"):
        assert blocked[name] == pytest.approx(plain[name] + relayout_seconds(spec, profile))
    assert relayout_seconds(spec, profile) == pytest.approx(2 * 4 * 2 * 32 * 28 * 28 / profile.bandwidth)


def test_an_nchw_input_with_blocked_readers_charges_only_the_output_relayout_to_lowerings_that_cant_write_blocks():
    from convopt.cost.model import measured_all, relayout_seconds

    spec = ConvSpec(1, 3, 56, 56, 32, (3, 3), stride=(2, 2), padding=(1, 1))  # a stem: reads the graph's input
    profile = fixed_profile()
    profile.coefficients["direct@blocked"] = {"flops": 0.01}  # must not predict a conv with an NCHW input
    plain = predict_all(spec, profile, 16)
    stem = predict_all(spec, profile, 16, blocked_output=True)
    output_only = relayout_seconds(spec, profile, include_input=False)
    assert output_only == pytest.approx(2 * 4 * 32 * 28 * 28 / profile.bandwidth)
    assert output_only < relayout_seconds(spec, profile)
    assert stem["im2col"] == pytest.approx(plain["im2col"] + output_only)  # vectorized over pixels: writes NCHW
    assert stem["direct"] == plain["direct"]  # writes the blocked output itself, predicted with NCHW coefficients
    assert stem["fft"] == pytest.approx(plain["fft"] + output_only)  # never writes blocked tensors
    # both sides blocked wins over blocked_output (the flag describes only a conv with an NCHW input)
    both_sides = predict_all(spec, profile, 16, blocked=True)
    assert predict_all(spec, profile, 16, blocked=True, blocked_output=True) == both_sides
    # measured: direct's kernel as it runs there, NCHW in and blocked out (tuning records "@blocked-output")
    table = {"direct@blocked-output": {"relu": 3e-4}, "direct": {"relu": 9e-4}, "im2col": {"relu": 2e-4}}
    measured = measured_all(spec, ["direct", "im2col"], table, profile, 16, blocked_output=True)
    assert measured == {"direct": 3e-4, "im2col": pytest.approx(2e-4 + output_only)}
    assert measured_all(spec, ["direct", "im2col"], table, profile, 16) == {"direct": 9e-4, "im2col": 2e-4}


def test_calibration_measures_blocked_variants_where_they_run_blocked():
    from convopt.cost.calibrate import all_variants, variants

    names = all_variants()
    assert "depthwise@blocked" in names and "direct@blocked" in names and "fft@blocked" not in names
    depthwise = ConvSpec(1, 32, 28, 28, 32, (3, 3), padding=(1, 1), groups=32)
    assert {"depthwise", "depthwise@blocked", "direct"} <= set(variants(depthwise, names, 16))
    assert "direct@blocked" not in variants(depthwise, names, 16)  # direct vectorizes it over pixels
    odd = ConvSpec(1, 24, 28, 28, 48, (1, 1))  # 24 channels don't make blocks of 16
    assert "direct@blocked" in variants(odd, names, 8) and "direct@blocked" not in variants(odd, names, 16)


def test_fit_scale_is_the_factor_between_two_sets_of_times():
    from convopt.cost.model import fit_scale

    seconds = np.array([1e-3, 2e-3, 5e-4])
    assert fit_scale(0.5 * seconds, seconds) == pytest.approx(2.0)
    assert 1.0 < fit_scale(np.array([0.5e-3, 1.2e-3, 0.2e-3]), seconds) < 2.5


def test_near_best_is_within_the_margin_fastest_first():
    from convopt.cost.model import near_best

    assert near_best({"a": 1.0, "b": 1.2, "c": 1.3, "d": 0.9}, margin=1.25) == ["d", "a"]
    assert near_best({"a": 1.0, "b": 1.2}, margin=1.25) == ["a", "b"]
    assert near_best({}) == []


def test_measured_times_are_looked_up_by_the_variant_that_would_run_and_need_every_name():
    from convopt.cost.model import measured_all, relayout_seconds

    spec = ConvSpec(1, 32, 28, 28, 32, (3, 3), padding=(1, 1), groups=32)  # depthwise: direct can't run blocked
    profile = fixed_profile()
    table = {"depthwise@blocked": {"relu": 1e-4}, "depthwise": {"relu": 2e-4}, "direct": {"relu": 3e-4}}
    assert measured_all(spec, ["depthwise", "direct"], table, profile, 16) == {"depthwise": 2e-4, "direct": 3e-4}
    blocked = measured_all(spec, ["depthwise", "direct"], table, profile, 16, blocked=True)
    assert blocked == {"depthwise": 1e-4, "direct": pytest.approx(3e-4 + relayout_seconds(spec, profile))}
    assert measured_all(spec, ["depthwise", "im2col"], table, profile, 16) == {}  # im2col never measured
    # compared on the epilogues measured for both: a fused residual add is not charged to one side only
    epilogues = {"depthwise": {"relu": 2e-4, "relu+residual": 9e-4}, "direct": {"relu": 3e-4, "none": 1e-5}}
    assert measured_all(spec, ["depthwise", "direct"], epilogues, profile, 16) == {"depthwise": 2e-4, "direct": 3e-4}
    disjoint = {"depthwise": {"relu+residual": 2e-4}, "direct": {"relu": 3e-4}}
    assert measured_all(spec, ["depthwise", "direct"], disjoint, profile, 16) == {}


def test_strided_im2win_is_charged_its_own_rate_where_a_profile_measured_one():
    """The Intel AVX-512 profile charges a strided im2win more than direct (measured 1.0-1.6x direct's time
    there); the AMD ones give the strided term im2win's plain rate (level there), so their choices stay."""
    from convopt.cost.profile import shipped_profiles

    strided = ConvSpec(1, 64, 56, 56, 128, (3, 3), (2, 2), padding=(1, 1))
    for key, profile in shipped_profiles().items():
        for name in ("im2win", "im2win@blocked"):
            own = profile.coefficients[name]
            assert own["slow_flops"] >= own["flops"] > 0, (key, name)  # never cheaper than an unstrided window
        im2win, direct = (predict(name, strided, profile, 16, blocked=True) for name in ("im2win", "direct"))
        if key.startswith("llvm-rocketlake"):
            assert im2win > 1.5 * direct
