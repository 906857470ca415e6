"""The lowering contract's layouts: every lowering reads a blocked input (BlockedView) and, where it writes
blocked outputs, stores [N, O/b, OH, OW, b] with a blocked residual, for 8 and 16 lanes."""

import numpy as np
import pytest
import torch
from tvm import te

from convopt.numerics import relative_error
from convopt.schedules.conv_spec import BlockedView, ConvSpec, nchw
from convopt.schedules.kernel import build_kernel, from_layout, to_layout
from convopt.schedules.lowerings import LOWERINGS, RULE_LOWERINGS, lowering

from .conv_cases import LANES, host

SPECS = [
    ConvSpec(1, 32, 10, 10, 32, (3, 3), padding=(1, 1)),  # Winograd's and every lowering's
    ConvSpec(2, 32, 9, 7, 64, (1, 1)),  # pointwise, batch 2, odd map
    ConvSpec(1, 32, 15, 15, 32, (3, 3), stride=(2, 2), padding=(1, 1), groups=32),  # depthwise, stride 2
    ConvSpec(1, 32, 8, 8, 32, (3, 3), padding=(1, 1), groups=2),  # grouped
    ConvSpec(2, 48, 1, 1, 32, (1, 1)),  # one pixel: gemv's, and any 1x1 lowering's
]
CASES = [(name, spec) for name in LOWERINGS + RULE_LOWERINGS for spec in SPECS if lowering(name).supports(spec) is None]


def test_blocked_view_reads_nchw_indices():
    t = te.placeholder((2, 3, 4, 5, 8), name="t")
    view = nchw(t)
    assert isinstance(view, BlockedView) and view.shape == (2, 24, 4, 5) and view.dtype == "float32"
    assert nchw(te.placeholder((2, 24, 4, 5))).shape[1] == 24  # NCHW: the tensor itself
    x = torch.randn(2, 24, 4, 5)
    assert torch.equal(from_layout(to_layout(x, 8), 8), x)
    assert to_layout(x, 8)[1, 13 // 8, 2, 3, 13 % 8] == x[1, 13, 2, 3]


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("name,spec", CASES, ids=[f"{n}-{s.describe()}" for n, s in CASES])
def test_blocked_input_and_output_match_torch(name, spec, lanes):
    low = lowering(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=g)
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=g)
    b = torch.randn(spec.out_channels, generator=g)
    r = torch.randn(spec.output_shape, generator=g)
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), spec.stride, spec.padding,
                                                spec.dilation, spec.groups) + r.double())
    layouts = [(lanes, None)] + ([(None, lanes), (lanes, lanes)] if low.writes_blocked else [])
    for in_block, out_block in layouts:
        kernel = build_kernel(name, spec, w, b, activation="relu", residual=True, target=host(lanes),
                              in_block=in_block, out_block=out_block)
        tolerance = 5e-5 if name.startswith("winograd") else 1e-5
        assert relative_error(kernel(x, r), ref) <= tolerance, (in_block, out_block)


PADDED_SPECS = [  # channels that don't fill whole blocks of 8 or 16
    ConvSpec(1, 20, 9, 9, 12, (3, 3), padding=(1, 1)),
    ConvSpec(2, 20, 7, 9, 28, (1, 1)),
    ConvSpec(1, 20, 11, 11, 20, (3, 3), stride=(2, 2), padding=(1, 1), groups=20),  # depthwise: padded alike
    ConvSpec(1, 20, 9, 9, 20, (3, 3), padding=(1, 1), groups=5),  # 4-channel groups: whole zero groups added
    ConvSpec(1, 24, 9, 10, 24, (3, 3), stride=(2, 2), padding=(1, 1), groups=3),  # 8-channel groups (paired)
]
PADDED_CASES = [(name, spec, lanes) for name in LOWERINGS + RULE_LOWERINGS for spec in PADDED_SPECS for lanes in LANES
                if lowering(name).supports(spec) is None and lowering(name).writes_blocked
                and (spec.in_channels % lanes or spec.out_channels % lanes)]  # (8-channel groups fill blocks of 8)


@pytest.mark.parametrize("name,spec,lanes", PADDED_CASES, ids=[f"{n}-{s.describe()}-{v}" for n, s, v in PADDED_CASES])
def test_padded_channel_blocks_in_and_out_match_torch_and_keep_the_pad_lanes_zero(name, spec, lanes):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(spec.batch, spec.in_channels, spec.height, spec.width, generator=g)
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel, generator=g)
    b, r = torch.randn(spec.out_channels, generator=g), torch.randn(spec.output_shape, generator=g)
    ref = torch.nn.functional.silu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), spec.stride,
                                                              spec.padding, spec.dilation, spec.groups) + r.double())
    kernel = build_kernel(name, spec, w, b, activation="silu", residual=True, target=host(lanes), in_block=lanes,
                          out_block=lanes)
    tolerance = 5e-5 if name.startswith("winograd") else 1e-5
    assert relative_error(kernel(x, r), ref) <= tolerance
    stored = torch.from_dlpack(kernel._out)
    assert stored.shape[1] * lanes > spec.out_channels and not stored[:, -1, ..., spec.out_channels % lanes:].any()


def test_a_grouped_conv_is_refused_padded_blocks_unless_whole_groups_fill_them():
    from convopt.schedules.conv_spec import pad_to_blocks, pads_by_groups

    spec = ConvSpec(1, 20, 8, 8, 20, (3, 3), padding=(1, 1), groups=2)  # groups of 10 in blocks of 8
    with pytest.raises(ValueError, match="whole groups|divides the block"):
        pad_to_blocks(spec, np.zeros((20, 10, 3, 3), np.float32), None, 8, 8)
    assert not pads_by_groups(ConvSpec(1, 24, 8, 8, 48, (3, 3), groups=6), 16)  # 4 in, 8 out a group
    regnet = ConvSpec(1, 152, 8, 8, 152, (3, 3), padding=(1, 1), groups=19)  # 8-channel groups
    padded, weight, bias = pad_to_blocks(regnet, np.ones((152, 8, 3, 3), np.float32), np.ones(152, np.float32),
                                         16, 16)
    assert (padded.in_channels, padded.out_channels, padded.groups) == (160, 160, 20)  # one group of zeros
    assert weight.shape == (160, 8, 3, 3) and not weight[152:].any() and not bias[152:].any()
    dense = ConvSpec(1, 20, 8, 8, 12, (1, 1))
    padded, weight, bias = pad_to_blocks(dense, np.ones((12, 20, 1, 1), np.float32), np.ones(12, np.float32), 8, 8)
    assert (padded.in_channels, padded.out_channels) == (20, 16)  # the input is read as its 20 real channels
    assert weight.shape == (16, 20, 1, 1) and not weight[12:].any() and not bias[12:].any()


def test_a_lowering_that_writes_nchw_only_refuses_a_blocked_output():
    from convopt.schedules.lowerings import LoweringError

    spec = SPECS[0]
    with pytest.raises(LoweringError, match="NCHW outputs only"):
        build_kernel("fft", spec, np.zeros((32, 32, 3, 3), np.float32), target=host(8), out_block=8)


def test_which_lowerings_run_blocked_at_full_speed():
    dense, depthwise = SPECS[0], SPECS[2]
    for lanes in LANES:
        assert lowering("direct").blocked_io(dense, lanes) and not lowering("direct").blocked_io(depthwise, lanes)
        assert lowering("depthwise").blocked_io(depthwise, lanes) and lowering("winograd4").blocked_io(dense, lanes)
        assert not lowering("im2col").blocked_io(dense, lanes)  # vectorized over pixels: blocked reads gather
        assert not lowering("fft").writes_blocked
