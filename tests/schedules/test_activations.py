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


@pytest.mark.parametrize("lanes", LANES)
def test_exp2_is_within_its_bound_and_saturates_exactly(lanes):
    y = np.concatenate([np.linspace(-126, 127, 400001), _float32s(-0.5, 0.5)[::97]]).astype(np.float32)
    got = _run(activations.exp2, y, lanes).astype(np.float64)
    assert np.abs(got / np.exp2(y.astype(np.float64)) - 1).max() <= 1.8e-7
    overflow = np.array([127.5 + 2 ** -16, 128.0, 1e30, np.inf] * 4, np.float32)
    underflow = np.array([-126.5, -127.0, -1e30, -np.inf] * 4, np.float32)
    assert (_run(activations.exp2, overflow, lanes) == np.inf).all()
    assert (_run(activations.exp2, underflow, lanes) == 0).all()
    assert np.isnan(_run(activations.exp2, np.array([np.nan, 1.0] * 8, np.float32), lanes)[0::2]).all()


@pytest.mark.parametrize("lanes", LANES)
def test_exp2_is_exact_at_integers(lanes):
    """2^n comes from the exponent field alone (the polynomial is exactly 1 at 0)."""
    n = np.arange(-126, 128, dtype=np.float32)
    got = _run(activations.exp2, np.resize(n, 256), lanes)[:len(n)].astype(np.float64)
    assert (got == np.exp2(n.astype(np.float64))).all()


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("scale", [-1 / math.log(2), 1 / math.log(2), -3.0])
def test_exp2_of_product_rounds_once_and_saturates_exactly(scale, lanes):
    """2^(s x) with s x never rounded on its own: within exp2's 1.8e-7 across the whole normal range (a
    product rounded first is off by up to |s x| ulps: 5e-6 relative near 2^+-127); beyond the clamp exactly
    +inf and +0, never a wrapped exponent."""
    exact = lambda v: np.exp2(float(np.float32(scale)) * v.astype(np.float64))  # the kernel's s is a float32
    lo, hi = sorted((-126 / scale, 127 / scale))
    x = np.linspace(lo, hi, 200001).astype(np.float32)
    got = _run(lambda v: activations.exp2_of_product(v, scale), x, lanes).astype(np.float64)
    assert np.abs(got / exact(x) - 1).max() <= 1.8e-7
    beyond = np.array([130.0, 1e4, 1e30, np.inf], np.float32) / np.float32(abs(scale))
    big = (np.sign(scale) * np.resize(beyond, 16)).astype(np.float32)
    assert (_run(lambda v: activations.exp2_of_product(v, scale), big, lanes) == np.inf).all()
    tiny = _run(lambda v: activations.exp2_of_product(v, scale), -big, lanes)
    assert (tiny == 0).all() and not np.signbit(tiny).any()


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name", ["sigmoid", "silu", "gelu_tanh"])
def test_exp2_gates_are_within_a_few_ulps(name, lanes):
    """Relative error at most 2.5e-7 (float32's ulp is 1.2e-7 relative at most) on every 97th float32 of
    [-20, 20] where the result is not tiny; PyTorch's own float32 kernels are at 1.0-1.4e-7 there."""
    x = np.concatenate([_float32s(-20.0, -1e-3)[::97], _float32s(1e-3, 20.0)[::97]])
    got = _run(lambda v: activations.activate(v, name), x, lanes).astype(np.float64)
    want = TORCH_ACTIVATIONS[name](torch.from_numpy(x).double()).numpy()
    kept = np.abs(want) > 1e-3
    assert (np.abs(got - want)[kept] <= 2.5e-7 * np.abs(want[kept])).all()


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
