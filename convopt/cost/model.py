"""Predicted time of a conv lowering on a machine, from the sympy terms and the machine profile:

    t(lowering, spec) = a_f * flops / peak + a_n * narrow_flops / peak + a_s * slow_flops / peak
                        + a_x * aux_flops / peak
                        + a_b * bytes / bandwidth + a_o * outputs * 1 ns + a_w * copied * 1 ns + a_c * 1 us

with the coefficients a (1 / efficiency of each kind of work, the epilogue's cost per output element,
which differs between lowerings that store from blocked accumulators and those that store rows, the
cost per element written to the workspace, and a per-call overhead) calibrated
per lowering by non-negative least squares on measured times, weighted so relative errors count
(``fit_coefficients``). Nothing is built to answer: it is arithmetic on formulas.
"""

from __future__ import annotations

import numpy as np

from ..schedules.conv_spec import ConvSpec
from ..schedules.lowerings import LOWERINGS, lowering
from .formulas import evaluate
from .profile import FEATURES, MachineProfile

CALL_UNIT = 1e-6  # seconds: the "calls" feature is one microsecond per kernel call
OUTPUT_UNIT = 1e-9  # seconds per output or copied element


def feature_vector(name: str, spec: ConvSpec, profile: MachineProfile, lanes: int) -> np.ndarray:
    """The terms of ``name`` for ``spec`` in seconds at peak / full bandwidth / 1 ns per output / 1 us per call."""
    terms = evaluate(name, spec, lanes)
    return np.array([terms["flops"] / profile.peak_flops, terms["narrow_flops"] / profile.peak_flops,
                     terms["slow_flops"] / profile.peak_flops,
                     terms["aux_flops"] / profile.peak_flops, terms["bytes"] / profile.bandwidth,
                     terms["outputs"] * OUTPUT_UNIT, terms["copied"] * OUTPUT_UNIT, CALL_UNIT])


def predict(name: str, spec: ConvSpec, profile: MachineProfile, lanes: int) -> float:
    """Predicted seconds of lowering ``name`` on ``spec``."""
    coefficients = profile.coefficients.get(name)
    if coefficients is None:
        raise KeyError(f"the machine profile has no coefficients for lowering {name!r}; run `convopt calibrate`")
    weights = np.array([coefficients.get(f, 0.0) for f in FEATURES])
    return float(feature_vector(name, spec, profile, lanes) @ weights)


def predict_all(spec: ConvSpec, profile: MachineProfile, lanes: int,
                candidates=LOWERINGS) -> dict[str, float]:
    """Predicted seconds of every lowering that supports ``spec`` and is calibrated."""
    return {name: predict(name, spec, profile, lanes) for name in candidates
            if name in profile.coefficients and lowering(name).supports(spec) is None}


def fit_coefficients(features: np.ndarray, seconds: np.ndarray) -> dict[str, float]:
    """Non-negative coefficients minimizing the squared relative error of the predicted times."""
    from scipy.optimize import nnls

    features, seconds = np.asarray(features, float), np.asarray(seconds, float)
    scaled = features / seconds[:, None]  # relative error: divide each row by its measured time
    used = np.abs(scaled).sum(axis=0) > 0
    solution = np.zeros(len(FEATURES))
    if used.any():
        solution[used], _ = nnls(scaled[:, used], np.ones(len(seconds)))
    return {f: float(v) for f, v in zip(FEATURES, solution)}
