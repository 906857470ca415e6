"""The Im2win lowering (convopt.schedules.im2win) against torch.nn.functional.conv2d."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from convopt.schedules import im2col, im2win
from convopt.schedules.conv_spec import ConvSpec

from .conv_cases import (LANES, WORKSPACE_SPECS, assert_workspace_is_what_is_allocated,
                         conv_specs, error_against_torch)

NAME = "im2win"
ACC_BLOCK = im2win.ACC_BLOCK


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=conv_specs(), bias=st.booleans(), residual=st.booleans(),
       activation=st.sampled_from(["none", "relu", "relu6"]), lanes=st.sampled_from(LANES))
def test_matches_torch(spec, bias, residual, activation, lanes):
    assume(im2win.supports(spec) is None)
    assert error_against_torch(NAME, spec, bias, residual, activation, lanes=lanes) < 1e-5


# both schedule modes, guarded tails, the input read in place, channel blocks within groups
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 16, 9, 14, 32, (3, 3), (1, 1), (1, 1)),    # "oc": 2 blocks x 4 outputs, OW = 14: a tail
    ConvSpec(2, 24, 6, 7, 16, (1, 1)),                     # 1x1: the window buffer is the input
    ConvSpec(1, 64, 5, 4, 96, (1, 1)),                     # 1x1, weights larger than the input: blocks outermost
    ConvSpec(1, 8, 12, 11, 16, (1, 3), (1, 2), (0, 1)),    # KH = 1 with padding: repacked
    ConvSpec(1, 12, 10, 9, 20, (3, 3), (1, 1), (1, 1), groups=2),   # Og = 10 per group: 5-channel blocks
    ConvSpec(1, 8, 16, 12, 8, (3, 3), (1, 1), (1, 1), groups=8),    # depthwise: "ow" mode
    ConvSpec(1, 6, 40, 37, 12, (2, 3), (2, 2), (1, 2), (2, 1), groups=6),
    ConvSpec(1, 24, 28, 28, 24, (3, 3), (1, 1), (1, 1), groups=8),  # 3 per group: columns innermost, 14 | 28
], ids=lambda s: s.describe())
@pytest.mark.parametrize("lanes", LANES)
def test_schedule_modes(spec, lanes):
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes) < 1e-5


@pytest.mark.parametrize("spec", [
    ConvSpec(1, 96, 7, 7, 96, (3, 3), (1, 1), (1, 1), groups=4),    # 24 per group: 8-channel blocks
    ConvSpec(1, 96, 14, 13, 96, (3, 3), (2, 2), (1, 1), groups=4),
    ConvSpec(1, 64, 9, 9, 64, (3, 3), (1, 1), (1, 1), groups=2),    # 32 per group: blocks align
], ids=lambda s: s.describe())
@pytest.mark.parametrize("lanes", LANES)
def test_blocked_tensors_with_groups_not_whole_vectors(spec, lanes):
    """Blocked input, residual and output where a group's channels are not whole vectors (RegNetX/Y's
    groups of 24 with AVX-512): the accumulator's 8-channel blocks straddle the output's 16-lane ones, so
    the epilogue is its own pass (it failed to compile: regnetx_016 and regnety_016)."""
    assert error_against_torch(NAME, spec, True, True, "relu", lanes=lanes, blocked=True) < 1e-5


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", [s for s in WORKSPACE_SPECS if im2win.supports(s) is None], ids=lambda s: s.describe())
def test_workspace_is_what_is_allocated(spec, lanes):
    assert_workspace_is_what_is_allocated(NAME, ACC_BLOCK, spec, lanes)


@pytest.mark.parametrize("spec", [ConvSpec(1, 64, 56, 56, 128, (1, 1), (2, 2)), ConvSpec(1, 16, 9, 8, 32, (1, 1), (1, 2))],
                         ids=lambda s: s.describe())
def test_a_strided_1x1_is_left_to_the_direct_kernel(spec):
    """(direct reads the same strided columns without the window copy: never slower where measured)"""
    assert "strided 1x1" in im2win.supports(spec)
    assert im2win.supports(ConvSpec(1, 64, 56, 56, 128, (1, 1))) is None  # unstrided: the window is the input
    assert im2win.supports(ConvSpec(1, 64, 56, 56, 128, (3, 3), (2, 2), (1, 1))) is None


def test_workspace_formula():
    spec = ConvSpec(2, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1))
    assert im2win.workspace_bytes(spec, 8) == 4 * 2 * 64 * 56 * 58 * 3
    assert im2win.workspace_bytes(ConvSpec(1, 64, 56, 56, 256, (1, 1)), 8) == 0  # the input itself


@pytest.mark.parametrize("spec", [
    ConvSpec(1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1)),
    ConvSpec(1, 128, 56, 56, 128, (3, 3), (2, 2), (1, 1)),
    ConvSpec(2, 32, 17, 23, 32, (3, 3), (1, 1), (2, 2), (2, 2), groups=32),
    ConvSpec(1, 16, 20, 20, 16, (3, 3)),
], ids=lambda s: s.describe())
def test_workspace_below_im2col(spec):
    win, col = im2win.workspace_bytes(spec, 8), im2col.workspace_bytes(spec, 8)
    assert 0 < win < col
    # im2col's col matrix alone is about KW/SW times the window buffer
    col_matrix = 4 * spec.batch * spec.in_channels * 9 * spec.out_height * spec.out_width
    assert col_matrix / win > 0.75 * 3 / spec.stride[1]
