"""The channel-blocked depthwise lowering (convopt.schedules.depthwise) against torch.nn.functional.conv2d."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convopt.schedules import depthwise, tiling
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.lowerings import lowering

from .conv_cases import (CUDA, LANES, OTHER_ISAS, assert_workspace_is_what_is_allocated, compiles_for,
                         error_against_torch, input_size)

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
    rows is partial."""
    lanes = draw(st.sampled_from(LANES))
    c = lanes * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3, 5, 7]))
    stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, k // 2))
    h, w = draw(st.integers(k, 30)), draw(st.integers(k, 17))
    return ConvSpec(draw(st.integers(1, 2)), c, h, w, c, (k, k), (stride, stride), (pad, pad), groups=c), lanes


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=blocked_specs(), residual=st.booleans())
def test_blocked_input_padded_a_band_at_a_time_matches_torch(case, residual):
    spec, lanes = case
    assert error_against_torch(NAME, spec, True, residual, "relu6", lanes=lanes, blocked=True) < 1e-5


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
