"""The channel-blocked depthwise lowering (convopt.schedules.depthwise) against torch.nn.functional.conv2d."""

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convopt.schedules import depthwise, tiling
from convopt.schedules.conv_spec import OUTPUT_BLOCK, ConvSpec
from convopt.schedules.kernel import scheduled_module
from convopt.schedules.lowerings import lowering

from .conv_cases import (CUDA, LANES, OTHER_ISAS, assert_workspace_is_what_is_allocated, compiles_for,
                         error_against_torch, host, input_size)

NAME = "depthwise"


@st.composite
def depthwise_specs(draw):
    c = draw(st.integers(1, 40))
    k = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h, w = input_size(draw, k, padding, dilation, 12)
    return ConvSpec(draw(st.integers(1, 2)), c, h, w, c, k, stride, padding, dilation, c)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=depthwise_specs(), bias=st.booleans(), residual=st.booleans(),
       activation=st.sampled_from(["none", "relu6", "silu"]), lanes=st.sampled_from(LANES))
def test_matches_torch(spec, bias, residual, activation, lanes):
    assert error_against_torch(NAME, spec, bias, residual, activation, lanes=lanes) < 1e-5


@st.composite
def blocked_specs(draw):
    """Depthwise convs between blocked neighbours (whole channel blocks): any height, so the last band of
    rows is partial; rows of one column tile (taps unrolled in both directions) and of several (the rows'
    taps a loop); padding up to the kernel's reach, dilated or not."""
    lanes = draw(st.sampled_from(LANES))
    c = lanes * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3, 5, 7]))
    d = draw(st.integers(1, 2))
    stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, d * (k // 2)))
    reach = d * (k - 1) + 1
    h, w = draw(st.integers(reach, 30)), draw(st.integers(reach, 40))
    return ConvSpec(draw(st.integers(1, 2)), c, h, w, c, (k, k), (stride, stride), (pad, pad), (d, d), groups=c), lanes


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=blocked_specs(), residual=st.booleans(), activation=st.sampled_from(["relu6", "silu"]))
def test_blocked_input_matches_torch(case, residual, activation):
    spec, lanes = case
    assert error_against_torch(NAME, spec, True, residual, activation, lanes=lanes, blocked=True) < 1e-5


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("width, taps_unrolled", [(7, ("ry", "rx")), (56, ("rx",))])
def test_blocked_input_is_read_in_place_and_accumulated_in_registers(lanes, width, taps_unrolled):
    """From blocked input nothing is staged: the padding is a test on each tap's load, folded away per
    unrolled column; the kernel's only buffer is its accumulator tile, which the unrolled epilogue reads."""
    spec = ConvSpec(1, 2 * lanes, width, width, 2 * lanes, (3, 3), padding=(1, 1), groups=2 * lanes)
    w = np.zeros((spec.out_channels, 1, 3, 3), np.float32)
    mod, _ = scheduled_module(NAME, spec, w, host(lanes), bias=True, activation="silu", in_block=lanes,
                              out_block=lanes)
    assert [b.name for b in mod["main"].body.block.alloc_buffers] == [depthwise.ACC_BLOCK]
    sch = tvm.s_tir.Schedule(mod)

    def unrolled(block):
        return [sch.get(loop).loop_var.name for loop in sch.get_loops(sch.get_sblock(block))
                if sch.get(loop).kind == tvm.tirx.ForKind.UNROLLED]

    assert unrolled(depthwise.ACC_BLOCK + "_update") == [*taps_unrolled, "x_1"]  # the taps, the register tile
    assert len(unrolled(OUTPUT_BLOCK)) == 1  # the epilogue over the tile


@pytest.mark.parametrize("rows,tasks,cores,band", [
    (28, 12, 2, 8), (14, 24, 2, 8), (7, 60, 2, 7), (112, 2, 2, 8), (14, 1, 2, 1), (56, 1, 2, 4), (4, 1, 2, 1),
    (14, 1, 8, 1)])
def test_band_rows_leave_four_tasks_per_core(rows, tasks, cores, band):
    assert tiling.band_rows(rows, tasks, cores) == band


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 1152, 7, 7, 1152, (5, 5), padding=(2, 2), groups=1152),   # EfficientNet's last stage
    ConvSpec(1, 96, 112, 112, 96, (3, 3), (2, 2), (1, 1), groups=96),     # MobileNetV2's stride-2 block
    ConvSpec(2, 20, 9, 13, 20, (3, 3), padding=(1, 1), groups=20),        # channels not a multiple of the lanes
], ids=lambda s: s.describe() if isinstance(s, ConvSpec) else str(s))
def test_network_layers(spec, lanes):
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes) < 1e-5


def test_refuses_other_convs():
    assert "one input and one output channel" in lowering(NAME).supports(ConvSpec(1, 8, 5, 5, 16, (3, 3), groups=8))
    assert lowering(NAME).supports(ConvSpec(1, 8, 5, 5, 16, (3, 3))) is not None


@pytest.mark.parametrize("lanes", LANES)
def test_workspace_is_what_is_allocated(lanes):
    spec = ConvSpec(1, 20, 9, 13, 20, (3, 3), padding=(1, 1), groups=20)
    assert_workspace_is_what_is_allocated(NAME, depthwise.ACC_BLOCK, spec, lanes)
    assert depthwise.workspace_bytes(spec, lanes) == 4 * (-(-20 // lanes) * lanes) * 11 * 15  # channel blocks


def test_cuda_builds():
    assert "__global__" in compiles_for(NAME, ConvSpec(1, 24, 9, 9, 24, (3, 3), padding=(1, 1), groups=24), CUDA)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_compiles_for_both_isas(isa):
    asm = compiles_for(NAME, ConvSpec(1, 64, 7, 7, 64, (5, 5), padding=(2, 2), groups=64), OTHER_ISAS[isa])
    assert ("zmm" in asm) == (isa == "avx512")
