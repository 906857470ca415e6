"""The epilogue activations as vectorized TIR: each against PyTorch (in float64) over the range where it
changes and far beyond it, for 8 and 16 lanes; the centred gates' error bound, their exact saturation and
that no float32 takes them past 1/2; NaN stays NaN."""

import math

import numpy as np
import pytest
import torch
import tvm
from tvm import te

from convopt.schedules import activations

from .conv_cases import LANES, TORCH_ACTIVATIONS, host

# 20001 points on [-12, 12], the extremes, and zero
POINTS = np.concatenate([np.linspace(-12, 12, 20001), [-1e30, -100.0, -0.0, 1e-30, 100.0, 1e30]]).astype(np.float32)


def _run(expression, x: np.ndarray, lanes: int) -> np.ndarray:
    data = te.placeholder(x.shape, name="x")
    out = te.compute(x.shape, lambda i: expression(data[i]), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, out]))
    (i,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(i, [None, lanes])[1])
    target = host(lanes)
    run = tvm.compile(sch.mod, target=target.tvm)["main"]
    device = target.device()
    result = tvm.runtime.empty(x.shape, "float32", device)
    run(tvm.runtime.tensor(x, device), result)
    return result.numpy()


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", sorted(set(TORCH_ACTIVATIONS) - {"none"}))
def test_matches_torch(name, lanes):
    got = _run(lambda v: activations.activate(v, name), POINTS, lanes).astype(np.float64)
    want = TORCH_ACTIVATIONS[name](torch.from_numpy(POINTS).double()).numpy()
    finite = np.isfinite(want)
    # relative to the largest output in the range where an activation changes (|x| <= 12), or to the output
    # itself where that is larger (float32 rounding of 1e30)
    scale = np.maximum(np.abs(want[np.abs(POINTS) <= 12]).max(), np.abs(want[finite]))
    assert (np.abs(got[finite] - want[finite]) <= 1e-6 * scale).all()


CENTRED = {  # centred gate -> (its definition in float64, its clamp)
    "normal_cdf": (lambda x: np.array([math.erf(v / math.sqrt(2)) / 2 for v in x]), activations.CDF_LIMIT),
    "sigmoid": (lambda x: np.tanh(x / 2) / 2, activations.SIGMOID_LIMIT),
}


def _float32s(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi]."""
    first, last = np.array([lo, hi], np.float32).view(np.int32)
    return np.arange(first, last + 1, dtype=np.int32).view(np.float32)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("gate", sorted(CENTRED))
def test_centred_gate_is_within_its_bound_and_saturates_exactly(gate, lanes):
    function = getattr(activations, f"centred_{gate}")
    exact, limit = CENTRED[gate]
    x = np.linspace(-2 * limit, 2 * limit, 40001).astype(np.float32)
    got = _run(function, x, lanes).astype(np.float64)
    assert np.abs(got - exact(x.astype(np.float64))).max() <= 3e-7
    far = np.array([limit, 2 * limit, 1e30, np.inf] * 4, np.float32)
    assert (_run(function, far, lanes) == 0.5).all() and (_run(function, -far, lanes) == -0.5).all()


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("gate", sorted(CENTRED))
def test_no_float_below_the_clamp_passes_one_half(gate, lanes):
    """The margin on the numerator keeps the fit's overshoot off every float32 up to the clamp (odd: the
    negative side mirrors it), so 1/2 + r stays in [0, 1] with no clamp on the output."""
    x = _float32s(1.0, CENTRED[gate][1])
    assert _run(getattr(activations, f"centred_{gate}"), x, lanes).max() <= 0.5


@pytest.mark.parametrize("name", ["gelu", "silu", "gelu_tanh"])
def test_gates_saturate_to_zero_and_to_x(name):
    x = np.array([-1e30, -1e8, -100.0, 1e8, 1e30, 100.0, 0.0, -0.0] * 2, np.float32)
    got = _run(lambda v: activations.activate(v, name), x, 16)
    assert (got[0:3] == 0).all() and (got[3:6] == x[3:6]).all() and (got[6:8] == 0).all()


@pytest.mark.parametrize("name", ["gelu", "silu", "sigmoid", "gelu_tanh"])
def test_nan_stays_nan(name):
    x = np.array([np.nan, 1.0] * 8, np.float32)
    got = _run(lambda v: activations.activate(v, name), x, 16)
    assert np.isnan(got[0::2]).all() and np.isfinite(got[1::2]).all()


@pytest.mark.parametrize("lanes", LANES)
def test_sigmoid_stays_in_the_unit_interval_and_silu_below_x(lanes):
    x = np.linspace(-40, 40, 80001).astype(np.float32)
    sig = _run(lambda v: activations.activate(v, "sigmoid"), x, lanes)
    silu = _run(lambda v: activations.activate(v, "silu"), x, lanes)
    assert sig.min() >= 0.0 and sig.max() <= 1.0 and np.all(np.diff(sig) >= -4e-7)  # monotone up to the fit's error
    assert np.all(silu[x > 0] <= x[x > 0]) and np.all(silu[x < 0] <= 0)
