"""The gemv lowering (convopt.schedules.gemv): a 1x1 conv over a one-pixel map against
torch.nn.functional.conv2d, where it applies, and when the cores share it."""

import numpy as np
import pytest

from convopt.schedules import gemv
from convopt.schedules.conv_spec import ConvSpec
from convopt.schedules.kernel import scheduled_module

from .conv_cases import LANES, error_against_torch, host

NAME = "gemv"


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("spec", [
    ConvSpec(1, 1152, 1, 1, 48, (1, 1)),   # squeeze: 3 blocks of 16, a weight the cores share
    ConvSpec(1, 48, 1, 1, 1152, (1, 1)),   # excite
    ConvSpec(2, 20, 1, 1, 13, (1, 1)),     # batch 2, a partial last block, one core
    ConvSpec(1, 7, 1, 1, 5, (1, 1), stride=(2, 2)),  # a stride changes nothing on one pixel
], ids=lambda s: s.describe())
@pytest.mark.parametrize("activation", ["none", "silu", "sigmoid"])
def test_matches_torch(spec, activation, lanes):
    for bias, residual in ((False, False), (True, True)):
        assert error_against_torch(NAME, spec, bias, residual, activation, lanes=lanes) < 1e-5


@pytest.mark.parametrize("spec, reason", [
    (ConvSpec(1, 16, 2, 2, 8, (1, 1)), "one-pixel map"),
    (ConvSpec(1, 16, 3, 3, 8, (3, 3)), "1x1 convs"),
    (ConvSpec(1, 16, 1, 1, 8, (1, 1), groups=2), "without groups"),
    (ConvSpec(1, 16, 1, 1, 8, (1, 1), padding=(1, 1)), "padding"),
], ids=lambda v: v if isinstance(v, str) else v.describe())
def test_other_convs_are_refused_with_the_reason(spec, reason):
    assert reason in gemv.supports(spec)


def _parallel_loops(spec, lanes):
    """(parallel loops, vectorized loops) of the scheduled kernel."""
    weight = np.zeros((spec.out_channels, spec.in_channels, 1, 1), np.float32)
    script = scheduled_module(NAME, spec, weight, host(lanes))[0].script()
    return script.count("T.parallel("), script.count("T.vectorized(")


@pytest.mark.parametrize("lanes", LANES)
def test_the_cores_share_only_a_large_weight(lanes):
    assert _parallel_loops(ConvSpec(1, 1152, 1, 1, 48, (1, 1)), lanes)[0] == 1  # 221 KB
    assert _parallel_loops(ConvSpec(1, 96, 1, 1, 4, (1, 1)), lanes) == (0, 2)  # 1.5 KB: one core, vectorized


@pytest.mark.parametrize("lanes", LANES)
def test_the_epilogue_is_vectorized_over_whole_vectors(lanes):
    # the sums (and their initialization) and the epilogue; 4 outputs make no whole vector (above)
    assert _parallel_loops(ConvSpec(1, 48, 1, 1, 1152, (1, 1)), lanes)[1] == 3
