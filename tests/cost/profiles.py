"""A fixed machine profile for tests: no measurement, known coefficients."""

from convopt.cost.profile import FEATURES, MachineProfile


def fixed_profile(**coefficients) -> MachineProfile:
    base = {"flops": 1.5, "narrow_flops": 4.0, "slow_flops": 2.5, "aux_flops": 2.0, "bytes": 1.0, "outputs": 0.5, "copied": 0.3, "calls": 5.0}
    names = ("direct", "im2col", "im2win", "winograd2", "winograd4", "fft", "depthwise")
    coefs = {name: dict(base) for name in names}
    for name, values in coefficients.items():
        coefs[name] = {f: values.get(f, 0.0) for f in FEATURES}
    return MachineProfile(cpu="test cpu", cores=2, peak_flops=100e9, bandwidth=20e9,
                          caches={"L1d": 32768, "L2": 524288, "L3": 33554432}, coefficients=coefs,
                          calibrated_on="test cpu", fma_peak_flops=150e9)
