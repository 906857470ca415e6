"""The epilogue activations as vectorized TIR: each against PyTorch (in float64) over the range where it
changes and far beyond it, for 8 and 16 lanes; the erf approximation's error bound; NaN stays NaN."""

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


@pytest.mark.parametrize("lanes", LANES)
def test_erf_is_within_its_bound_and_saturates(lanes):
    x = np.linspace(-6, 6, 60001).astype(np.float32)
    got = _run(activations.fast_erf, x, lanes).astype(np.float64)
    want = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(got - want).max() <= 4e-7
    assert np.all(np.abs(got) <= 1.0)  # never past +-1: 1 + erf(x) of GELU stays >= 0
    assert got[0] == -1.0 and got[-1] == 1.0


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
