"""Predicted time of a conv lowering on a machine, from the sympy terms and the machine profile:

    t(lowering, spec) = a_f * flops / peak + a_n * narrow_flops / peak + a_s * slow_flops / peak
                        + a_x * aux_flops / peak
                        + a_b * bytes / bandwidth + a_o * outputs * 1 ns + a_w * copied * 1 ns + a_c * 1 us

with the coefficients a (1 / efficiency of each kind of work, the epilogue's cost per output element,
which differs between lowerings that store from blocked accumulators and those that store rows, the
cost per element written to the workspace, and a per-call overhead) calibrated
per lowering by non-negative least squares on measured times, weighted so relative errors count
(``fit_coefficients``). Nothing is built to answer: it is arithmetic on formulas.

Layouts: a lowering that runs on blocked tensors (``Lowering.blocked_io``) has a second set of coefficients,
``"<lowering>@blocked"``: its NCHW coefficients times one factor fitted on kernels whose input and output
are NCHW[lanes]c (calibrate.py; the depthwise kernel's blocking pass becomes a copy, for instance).
Between blocked neighbours (``blocked=True``) those predict it; a lowering that can't run blocked pays
``relayout_seconds`` for the NCHW input and output it forces on its neighbours. A conv whose input is NCHW
(e.g. a stem, reading the graph's input) but whose output's readers take blocked tensors (``blocked_output``)
is predicted with the NCHW coefficients, and a lowering that can't write blocked tensors pays the output's
half of the relayout (its reader changes the layout); tuning records measure that mix as "@blocked-output".
A profile without ``@blocked`` coefficients predicts every layout with the NCHW ones.

Weights from memory: calibration and tuning time a kernel alone, its weights staying in cache from call to
call. In a model whose weights exceed the last-level cache, every conv reads its packed weights from memory on
every run, which costs ``weight_stream_seconds`` (its ``weights`` term at the rate conv kernels were measured
to stream weights, cost/weight_stream.py: on Zen 5 about 50-56 GB/s against a copy's 62-89) on top, and more
for the lowerings that expand them (Winograd F(4,3)'s U is 4x the conv's weights, F(2,3)'s 1.8x).
select_lowering decides per model whether that holds (``weights_stream``) and adds it to predictions and
measurements alike.

Measurements: a tuning job measures every lowering predicted within ``MEASURE_MARGIN`` of the best
(``near_best``); where all of them were measured for a conv's shape, ``measured_all`` gives their measured
times, which select_lowering prefers to the predictions.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..schedules.conv_spec import ConvSpec
from ..schedules.lowerings import LOWERINGS, lowering
from .formulas import evaluate
from .formulas import F32
from .profile import FEATURES, MachineProfile

CALL_UNIT = 1e-6  # seconds: the "calls" feature is one microsecond per kernel call
OUTPUT_UNIT = 1e-9  # seconds per output or copied element
BLOCKED = "@blocked"  # suffix of the coefficients for blocked input and output
BLOCKED_OUTPUT = "@blocked-output"  # suffix of a measured kernel with an NCHW input and a blocked output
MEASURE_MARGIN = 1.25  # lowerings predicted within this factor of the best are all measured when tuning


def coefficients_key(name: str, blocked: bool, profile: MachineProfile) -> str:
    """The profile's coefficients for lowering ``name`` in a layout (the NCHW ones when not calibrated)."""
    return name + BLOCKED if blocked and name + BLOCKED in profile.coefficients else name


def relayout_seconds(spec: ConvSpec, profile: MachineProfile, *, include_input: bool = True) -> float:
    """A pass over the conv's output and (``include_input``) its input at the measured bandwidth: the layout
    change of those tensors."""
    elements = spec.batch * ((spec.in_channels * spec.height * spec.width if include_input else 0)
                             + spec.out_channels * spec.out_height * spec.out_width)
    return 2 * F32 * elements / profile.bandwidth  # read and write


def feature_vector(name: str, spec: ConvSpec, profile: MachineProfile, lanes: int) -> np.ndarray:
    """The terms of ``name`` for ``spec`` in seconds at peak / full bandwidth / 1 ns per output / 1 us per call."""
    terms = evaluate(name, spec, lanes)
    return np.array([terms["flops"] / profile.peak_flops, terms["narrow_flops"] / profile.peak_flops,
                     terms["slow_flops"] / profile.peak_flops,
                     terms["aux_flops"] / profile.peak_flops, terms["bytes"] / profile.bandwidth,
                     terms["outputs"] * OUTPUT_UNIT, terms["copied"] * OUTPUT_UNIT, CALL_UNIT])


def predict(name: str, spec: ConvSpec, profile: MachineProfile, lanes: int, blocked: bool = False) -> float:
    """Predicted seconds of lowering ``name`` on ``spec`` (``blocked``: with blocked input and output)."""
    coefficients = profile.coefficients.get(coefficients_key(name, blocked, profile))
    if coefficients is None:
        raise KeyError(f"the machine profile has no coefficients for lowering {name!r}; run `convopt calibrate`")
    weights = np.array([coefficients.get(f, 0.0) for f in FEATURES])
    return float(feature_vector(name, spec, profile, lanes) @ weights)


def works_blocked(name: str, spec: ConvSpec, lanes: int) -> bool:
    """Whether lowering ``name`` writes blocked tensors for ``spec`` and keeps its speed on them (it vectorizes
    over channels): the convs whose outputs block_layout stores blocked."""
    low = lowering(name)
    return low.writes_blocked and low.blocked_io(spec, lanes)


def runs_blocked(name: str, spec: ConvSpec, lanes: int, blocked: bool) -> bool:
    """Whether lowering ``name`` reads and writes blocked tensors for a conv between blocked neighbours
    (``blocked``); otherwise it runs on NCHW and its neighbours change layout around it."""
    return blocked and works_blocked(name, spec, lanes)


def variant(name: str, spec: ConvSpec, lanes: int, blocked: bool, blocked_output: bool = False) -> str:
    """The name of what runs: the lowering, with "@blocked" when it runs on blocked tensors, "@blocked-output"
    when it reads an NCHW input and writes a blocked output (``blocked_output``: a stem, whose readers are
    blocked; tuning records that mix under this name, and no coefficients predict it)."""
    if runs_blocked(name, spec, lanes, blocked):
        return name + BLOCKED
    if blocked_output and not blocked and works_blocked(name, spec, lanes):
        return name + BLOCKED_OUTPUT
    return name


def packed_weight_bytes(name: str, spec: ConvSpec, lanes: int) -> float:
    """Bytes of lowering ``name``'s packed weights for ``spec`` (the formulas' ``weights`` term)."""
    return evaluate(name, spec, lanes)["weights"]


def weight_stream_seconds(name: str, spec: ConvSpec, profile: MachineProfile, lanes: int) -> float:
    """Seconds to read lowering ``name``'s packed weights for ``spec`` from memory at the rate a kernel was
    measured to stream them (profile.weight_bandwidth: the copy bandwidth where that wasn't measured)."""
    return packed_weight_bytes(name, spec, lanes) / profile.weight_bandwidth


def predict_all(spec: ConvSpec, profile: MachineProfile, lanes: int, candidates=LOWERINGS, blocked: bool = False,
                weights_stream: bool = False, blocked_output: bool = False) -> dict[str, float]:
    """Predicted seconds of every lowering that supports ``spec`` and is calibrated; ``blocked``: for a conv
    between blocked neighbours; ``blocked_output``: for a conv with an NCHW input whose output's readers
    take blocked tensors; ``weights_stream``: in a model whose weights come from memory (see the module
    docstring)."""
    predicted = {}
    for name in candidates:
        if name not in profile.coefficients or lowering(name).supports(spec) is not None:
            continue
        in_blocks = runs_blocked(name, spec, lanes, blocked)
        predicted[name] = predict(name, spec, profile, lanes, in_blocks)
        predicted[name] += _relayout(name, spec, profile, lanes, blocked, blocked_output)
        if weights_stream:
            predicted[name] += weight_stream_seconds(name, spec, profile, lanes)
    return predicted


def _relayout(name: str, spec: ConvSpec, profile: MachineProfile, lanes: int, blocked: bool,
              blocked_output: bool) -> float:
    """The layout change lowering ``name`` forces on its neighbours: both sides between blocked neighbours
    when it can't run blocked; the output alone, when only the output's readers are blocked and it can't
    write blocked tensors at full speed."""
    if blocked:
        return 0.0 if works_blocked(name, spec, lanes) else relayout_seconds(spec, profile)
    if blocked_output and not works_blocked(name, spec, lanes):
        return relayout_seconds(spec, profile, include_input=False)
    return 0.0


def near_best(predicted: dict[str, float], margin: float = MEASURE_MARGIN) -> list[str]:
    """The lowerings predicted within ``margin`` of the fastest prediction, fastest first: those a tuning job
    measures, because the cost model can't tell them apart reliably (its hit rate is not 100%)."""
    if not predicted:
        return []
    best = min(predicted.values())
    return sorted((name for name, t in predicted.items() if t <= margin * best), key=predicted.get)


def measured_all(spec: ConvSpec, names: list[str], measured: Mapping[str, Mapping[str, float]],
                 profile: MachineProfile, lanes: int, blocked: bool = False,
                 weights_stream: bool = False, blocked_output: bool = False) -> dict[str, float]:
    """Measured seconds of each lowering in ``names`` as it would run here, plus the relayout a lowering that
    can't run blocked forces on its neighbours (predicted, as in predict_all: it is not part of the
    kernel; ``blocked_output`` as there). ``measured``: variant -> {epilogue: seconds of its best tuned kernel
    on this shape}; lowerings are compared on the epilogues measured for all of them (the mean over those), since a fused residual add
    costs time of its own. Empty unless every name was measured with a common epilogue: a partial comparison
    would favour whichever was measured. ``weights_stream``: plus ``weight_stream_seconds``, which a kernel
    timed alone didn't pay."""
    rows = [measured.get(variant(name, spec, lanes, blocked, blocked_output)) for name in names]
    if not names or any(not row for row in rows):
        return {}
    common = set.intersection(*(set(row) for row in rows))
    if not common:
        return {}
    return {name: sum(row[e] for e in common) / len(common)
            + _relayout(name, spec, profile, lanes, blocked, blocked_output)
            + (weight_stream_seconds(name, spec, profile, lanes) if weights_stream else 0.0)
            for name, row in zip(names, rows)}


def fit_scale(predicted: np.ndarray, seconds: np.ndarray) -> float:
    """s minimizing sum(((s * predicted - seconds) / seconds)^2): the factor between two sets of times."""
    ratio = np.asarray(predicted, float) / np.asarray(seconds, float)
    return float(ratio.sum() / (ratio ** 2).sum())


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
