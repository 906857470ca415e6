"""The fused squeeze-excite kernel against numpy (relative error): channels that are and aren't multiples of the
SIMD width, odd maps, bands, batch > 1, x and out in either layout, ending in the scaled map, the gate or a
conv's packed weight times the gate (channel axes 1 and 3, the lowering's own padding, one core or all), for 8
and 16 lanes; where its loops run in parallel; and the shapes it refuses. End to end on models in
tests/backends/test_conv_kernels.py."""

import numpy as np
import pytest
import torch
import tvm

from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.squeeze_excite import (PLACEHOLDER, ScaledWeight, SqueezeExcite, default_bands, io_shapes,
                                              prepare_weights, prim_func, random_arrays, supports)
from convopt.target import resolve_target

ACT = {"relu": lambda v: np.maximum(v, 0), "silu": lambda v: v / (1 + np.exp(-v)),
       "sigmoid": lambda v: 1 / (1 + np.exp(-v))}


def _expected(block: SqueezeExcite, x, w1, b1, w2, b2) -> tuple[np.ndarray, np.ndarray]:
    """(the gate [N, C, 1, 1], x times it), float64."""
    x = x.astype(np.float64)
    pooled = x.mean(axis=(2, 3))
    hidden = ACT[block.activation](pooled @ w1.reshape(w1.shape[:2]).T.astype(np.float64) + b1)
    gate = ACT[block.gate](hidden @ w2.reshape(w2.shape[:2]).T.astype(np.float64) + b2)[:, :, None, None]
    return gate, x * gate


def _run(block, lanes, bands, in_block, out_block, x, arrays, scaled=None, packed=PLACEHOLDER):
    target = resolve_target("cpu")  # the host runs either width
    func = prim_func(block, lanes, bands, in_block=in_block, out_block=out_block, scaled_weight=scaled)
    run = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm)["main"]
    out = tvm.runtime.empty(io_shapes(block, lanes, in_block, out_block, scaled)[1], "float32", target.device())
    stored = to_blocked(x, lanes) if in_block else x
    run(tvm.runtime.tensor(stored), *map(tvm.runtime.tensor, prepare_weights(block, *arrays, lanes=lanes)),
        tvm.runtime.tensor(packed), out)
    return out.numpy()


def _close(got, expected) -> bool:
    return relative_error(torch.from_numpy(np.ascontiguousarray(got)),
                          torch.from_numpy(np.asarray(expected, np.float32))) <= 1e-5


GRID = [  # C, J, H, W, batch, bands, activation
    (40, 10, 7, 7, 1, 1, "silu"),      # C a multiple of 8, not of 16; a 7 x 7 map (columns not in fours)
    (20, 6, 9, 13, 2, 3, "relu"),      # C under two vectors of 16, batch 2, three bands of 3 rows
    (64, 16, 5, 8, 1, 2, "silu"),      # whole vectors; two bands of uneven rows (3 and 2)
]


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("layouts", [(True, True), (False, False), (True, False), (False, True)],
                         ids=["bb", "nn", "bn", "nb"])
@pytest.mark.parametrize("scales", [True, False], ids=["scaled-map", "gate"])
@pytest.mark.parametrize("C, J, H, W, batch, bands, act", GRID)
def test_the_kernel_matches_numpy(C, J, H, W, batch, bands, act, scales, layouts, lanes):
    block = SqueezeExcite.of(C, J, H, W, activation=act, batch=batch, scales=scales)
    rng = np.random.default_rng(C + H)
    arrays = random_arrays(block, rng)
    x = rng.standard_normal((batch, C, H, W)).astype(np.float32)
    in_block, out_block = layouts
    got = _run(block, lanes, bands, in_block, out_block, x, arrays)
    gate, scaled = _expected(block, x, *arrays)
    expected = scaled if scales else gate
    assert _close(got, to_blocked(expected, lanes) if out_block else expected)  # pad lanes 0 too


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("shape, axis", [((2, 40, 1, 1, 16), 1),      # the direct conv's [OCB, I, KH, KW, ob]
                                         ((2, 56, 3, 3, 16), 1),      # im2win-like, padded beyond whole vectors
                                         ((4, 4, 3, 48, 16), 3),      # Winograd's [a, a, O/ob, C, ob]
                                         ((8, 40, 3, 3, 32), 1)],     # 368 KB: scaled on every core
                         ids=["direct", "padded", "winograd", "parallel"])
@pytest.mark.parametrize("in_block", [True, False], ids=["blocked", "nchw"])
def test_a_conv_weight_scaled_by_the_gate(shape, axis, in_block, lanes):
    C = 40
    block = SqueezeExcite.of(C, 10, 6, 6, scales=False)
    rng = np.random.default_rng(1)
    arrays = random_arrays(block, rng)
    x = rng.standard_normal((1, C, 6, 6)).astype(np.float32)
    packed = rng.standard_normal(shape).astype(np.float32)
    got = _run(block, lanes, 1, in_block, False, x, arrays, ScaledWeight(shape, axis), packed)
    gate = np.zeros(shape[axis])
    gate[:C] = _expected(block, x, *arrays)[0].reshape(C)  # the lowering's pad channels: times 0
    broadcast = [1] * len(shape)
    broadcast[axis] = shape[axis]
    assert got.shape == shape and _close(got, packed * gate.reshape(broadcast))


def _parallel_loops(func) -> int:
    return func.script().count("T.parallel(")


def test_the_squeeze_and_the_scaling_are_parallel_and_the_gate_serial():
    block = SqueezeExcite.of(64, 16, 14, 14)
    assert _parallel_loops(prim_func(block, 16, in_block=True, out_block=True)) == 2  # squeeze; gate and scale
    gate = SqueezeExcite.of(64, 16, 14, 14, scales=False)
    assert _parallel_loops(prim_func(gate, 16)) == 1
    small = ScaledWeight((2, 64, 1, 1, 16), 1)  # 8 KB: one core scales it sooner than the others wake
    assert _parallel_loops(prim_func(gate, 16, scaled_weight=small)) == 1
    large = ScaledWeight((16, 64, 3, 3, 16), 1)  # 590 KB
    assert _parallel_loops(prim_func(gate, 16, scaled_weight=large)) == 2


def test_only_a_gate_of_batch_one_scales_a_weight():
    weight = ScaledWeight((2, 64, 1, 1, 16), 1)
    with pytest.raises(ValueError, match="batch 1"):
        prim_func(SqueezeExcite.of(64, 16, 7, 7, scales=True), 16, scaled_weight=weight)
    with pytest.raises(ValueError, match="batch 1"):
        prim_func(SqueezeExcite.of(64, 16, 7, 7, scales=False, batch=2), 16, scaled_weight=weight)


def test_unknown_activations_and_mismatched_convs_are_refused():
    assert supports(SqueezeExcite.of(64, 16, 7, 7)) is None
    assert "mish2" in supports(SqueezeExcite.of(64, 16, 7, 7, activation="mish2"))
    block = SqueezeExcite.of(64, 16, 7, 7)
    wrong = SqueezeExcite(block.nodes, block.reduce, SqueezeExcite.of(48, 16, 7, 7).expand, 7, 7, "silu", "sigmoid")
    assert "doesn't undo" in supports(wrong)


def test_rows_are_split_in_bands_only_where_vectors_are_too_few_for_the_cores():
    assert default_bands(SqueezeExcite.of(1152, 48, 7, 7), cores=2, lanes=16) == 1
    assert default_bands(SqueezeExcite.of(32, 8, 112, 112), cores=2, lanes=16) == 2
    assert default_bands(SqueezeExcite.of(16, 4, 3, 3), cores=8, lanes=16) == 3  # at most a band a row
