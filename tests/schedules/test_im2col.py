"""The im2col + GEMM lowering (convopt.schedules.im2col) against torch.nn.functional.conv2d."""

import dataclasses

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convopt.schedules import im2col, tiling
from convopt.schedules.kernel import scheduled_module
from convopt.schedules.conv_spec import ConvSpec

from .conv_cases import (LANES, WORKSPACE_SPECS, assert_workspace_is_what_is_allocated,
                         conv_specs, error_against_torch, host, lowered_bytes)

NAME = "im2col"
ACC_BLOCK = im2col.GEMM_BLOCK


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=conv_specs(), bias=st.booleans(), residual=st.booleans(),
       activation=st.sampled_from(["none", "relu", "relu6"]), lanes=st.sampled_from(LANES))
def test_matches_torch(spec, bias, residual, activation, lanes):
    assert error_against_torch(NAME, spec, bias, residual, activation, lanes=lanes) < 1e-5


# every register-tile mode of the GEMM, and the 1x1 path that reads the input in place
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 24, 8, 8, 16, (1, 1)),                     # "p": 4 channels x 16 pixels, no unroll
    ConvSpec(2, 16, 7, 7, 32, (1, 1)),                     # "o": P = 49, channels vectorized
    ConvSpec(1, 12, 9, 10, 16, (3, 3), (1, 1), (1, 1)),    # "o" with unroll
    ConvSpec(1, 6, 9, 7, 6, (3, 2), (2, 1), (1, 0)),       # "p" with a guarded tail (P = 30, Og = 6)
    ConvSpec(1, 6, 9, 7, 12, (3, 2), (2, 1), (1, 0)),      # "o" with 4-lane vectors (P = 30, Og = 12)
    ConvSpec(1, 8, 16, 12, 8, (3, 3), (1, 1), (1, 1), groups=8),   # depthwise
    ConvSpec(1, 16, 12, 12, 24, (3, 3), (2, 2), (2, 2), (2, 2), groups=2),
], ids=lambda s: s.describe())
@pytest.mark.parametrize("lanes", LANES)
def test_tile_modes(spec, lanes):
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes) < 1e-5


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", WORKSPACE_SPECS, ids=lambda s: s.describe())
def test_workspace_is_what_is_allocated(spec, lanes):
    assert_workspace_is_what_is_allocated(NAME, ACC_BLOCK, spec, lanes)


def test_1x1_reads_the_input_in_place():
    for spec in (ConvSpec(1, 64, 56, 56, 256, (1, 1)), ConvSpec(2, 32, 7, 7, 64, (1, 1), groups=4)):
        assert im2col.workspace_bytes(spec, 8) == 0
        assert lowered_bytes(NAME, spec, ACC_BLOCK, 8)[0] == 0
    # a strided or padded 1x1 has to gather
    assert im2col.workspace_bytes(ConvSpec(1, 16, 8, 8, 32, (1, 1), (2, 2)), 8) == 4 * 16 * 16


def test_workspace_formula():
    spec = ConvSpec(2, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1))
    col = 2 * 64 * 9 * 56 * 56
    assert im2col.workspace_bytes(spec, 8) == 4 * (col + 2 * 64 * 58 * 58)


def _two_cores(lanes):
    return dataclasses.replace(host(lanes), cores=2)  # the rule's outcome depends on the cores: fix them


def _gemm_parallel_extent(spec, lanes) -> int:
    """The extent of the parallel loop around the GEMM scheduled for 2 cores."""
    w = np.zeros((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod, _ = scheduled_module(NAME, spec, w, _two_cores(lanes), bias=True)
    sch = tvm.s_tir.Schedule(mod)
    sch.work_on(next(gv.name_hint for gv in mod.get_global_vars()))
    first = sch.get(sch.get_loops(sch.get_sblock(ACC_BLOCK + "_update"))[0])
    assert first.kind == tvm.tirx.ForKind.PARALLEL
    return int(first.extent)


@pytest.mark.parametrize("lanes", LANES)
def test_small_maps_spread_the_gemm_over_output_channels_too(lanes):
    """A 4x4 map is one tile of pixels: its output-channel tiles run in parallel too (else one core does it all);
    7x7 (mode "o") likewise where its pixel tiles are 7; a 28x28 map has pixel tiles enough for both cores, and keeps them alone."""
    cores = 2
    small = ConvSpec(1, 64, 4, 4, 64, (3, 3), (1, 1), (1, 1))
    mode, _, tile_o, tile_p = im2col.plan(small, lanes)
    assert _gemm_parallel_extent(small, lanes) == (64 // tile_o) * (16 // tile_p) >= 2 * cores
    seven = ConvSpec(1, 64, 7, 7, 64, (1, 1))
    mode, _, tile_o, tile_p = im2col.plan(seven, lanes)
    spread = tiling.spreads_over_channels(49 // tile_p, cores)
    assert mode == "o" and spread == (tile_p == 7)  # 7 tiles of 7 pixels (16 lanes), or 49 of one (8 lanes)
    assert _gemm_parallel_extent(seven, lanes) == (49 // tile_p) * (64 // lanes // tile_o if spread else 1)
    large = ConvSpec(1, 64, 28, 28, 64, (3, 3), (1, 1), (1, 1))
    mode, _, _, tile_p = im2col.plan(large, lanes)
    assert _gemm_parallel_extent(large, lanes) == 784 // tile_p
    assert not tiling.spreads_over_channels(784 // tile_p, cores)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", [ConvSpec(1, 64, 4, 4, 48, (3, 3), (1, 1), (1, 1)),
                                  ConvSpec(2, 32, 7, 7, 64, (1, 1)), ConvSpec(1, 24, 2, 2, 40, (1, 1))],
                         ids=lambda s: s.describe())
def test_small_maps_match_torch(spec, lanes):
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes) < 1e-5


def test_spreads_over_channels_where_pixel_tiles_split_unevenly():
    assert tiling.spreads_over_channels(1, 2) and tiling.spreads_over_channels(7, 2)
    assert not tiling.spreads_over_channels(8, 2) and not tiling.spreads_over_channels(49, 2)
    assert not tiling.spreads_over_channels(1, 1)


def _col_vector_width(spec, lanes) -> int | None:
    """The vectorized loop's extent in the unroll stage (col), None when it copies element by element."""
    w = np.zeros((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod, _ = scheduled_module(NAME, spec, w, host(lanes))
    sch = tvm.s_tir.Schedule(mod)
    sch.work_on(next(gv.name_hint for gv in mod.get_global_vars()))
    loops = [sch.get(v) for v in sch.get_loops(sch.get_sblock(im2col.COL_BLOCK))]
    vectorized = [int(v.extent) for v in loops if v.kind == tvm.tirx.ForKind.VECTORIZED]
    return vectorized[0] if vectorized else None


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec, columns", [
    (ConvSpec(1, 14, 32, 32, 14, (3, 3), (1, 1), (1, 1)), 32),     # a whole vector (AVX2, AVX-512) divides 32
    (ConvSpec(1, 16, 64, 64, 16, (3, 3), (2, 2), (1, 1)), 32),     # stride 2: input columns gathered
    (ConvSpec(1, 8, 56, 56, 8, (3, 3), (1, 1), (1, 1)), 56),       # half a vector of AVX-512, a vector of AVX2
    (ConvSpec(1, 8, 14, 14, 8, (3, 3), (1, 1), (1, 1)), 14),       # neither: copied one by one
], ids=lambda v: v.describe() if isinstance(v, ConvSpec) else str(v))
def test_the_unroll_stage_copies_vectors_of_columns(spec, columns, lanes):
    """Each col row's output columns are copied a vector (or half a vector) at a time where one divides the
    row (tiling.col_copy_vector); the result is the same conv, strided or not."""
    expected = next((v for v in (lanes, lanes // 2) if columns % v == 0), None)
    assert tiling.col_copy_vector(columns, lanes) == expected
    assert _col_vector_width(spec, lanes) == expected
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes) < 1e-5
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes, blocked=True) < 1e-5


def _gemm_vector_width(spec, lanes) -> int:
    """The vectorized loop's extent in the GEMM block (its update, after the reduction's init is split off)."""
    w = np.zeros((spec.out_channels, spec.in_per_group, *spec.kernel), np.float32)
    mod, _ = scheduled_module(NAME, spec, w, host(lanes))
    sch = tvm.s_tir.Schedule(mod)
    sch.work_on(next(gv.name_hint for gv in mod.get_global_vars()))
    (width,) = [int(sch.get(v).extent) for v in sch.get_loops(sch.get_sblock(ACC_BLOCK + "_update"))
                if sch.get(v).kind == tvm.tirx.ForKind.VECTORIZED]
    return width


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 56, 14, 14, 56, (3, 3), (1, 1), (1, 1)),   # P = 196, Og = 56: 8-lane channel vectors
    ConvSpec(1, 20, 7, 7, 20, (3, 3), (1, 1), (1, 1)),     # P = 49, Og = 20: 4-lane channel vectors
    ConvSpec(1, 6, 7, 7, 6, (3, 3), (1, 1), (1, 1)),       # Og = 6: pixel vectors with a guarded tail
    ConvSpec(1, 16, 14, 14, 48, (3, 3), (1, 1), (1, 1)),   # Og = 48, a multiple of either width: full vectors
], ids=lambda s: s.describe())
def test_channels_the_simd_width_does_not_divide_take_narrower_channel_vectors(spec, lanes):
    """Where neither the pixels nor the channels are a multiple of the lanes, the GEMM vectorizes over the
    channels with the widest of lanes/2 and lanes/4 (at least 4) dividing them: a guarded pixel vector per
    row of a 4-channel tile ran 4-25x slower (56 -> 56 3x3 at 14x14: 217 us against 69, Zen 5)."""
    pixels, og = spec.out_height * spec.out_width, spec.out_per_group
    narrow = [w for w in (lanes // 2, lanes // 4) if w >= 4 and og % w == 0]
    mode, width, tile_o, tile_p = tiling.gemm_tile(pixels, og, spec.out_channels, lanes)
    if pixels % lanes and og % lanes and narrow:
        assert (mode, width) == ("o", narrow[0])
    if mode == "o":  # the cost formulas count narrower vectors as their share of a full one
        assert tiling.gemm_accumulators(pixels, og, spec.out_channels, lanes) == tile_o * tile_p * width / lanes
    assert _gemm_vector_width(spec, lanes) == (width if mode == "o" else min(lanes, tile_p))
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes) < 1e-5
