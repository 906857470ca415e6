"""The layer norm kernels against PyTorch: over the channels of each pixel (channel_norm) in NCHW and in
channel blocks of 8 and 16, and over rows (layer_norm); their schedules are parallel and vectorized."""

import pytest
import torch
import tvm
from tvm import tirx
from tvm.script import tirx as T

from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.layer_norm import all_lanes_sum
from convopt.schedules.layer_norm import channel_prim_func as prim_func

from .conv_cases import host


def _reference(x, gamma, beta, eps):
    return torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), gamma, beta, eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("shape, blocked", [((2, 40, 7, 9), False), ((1, 3, 5, 5), False), ((2, 32, 5, 7), True),
                                            ((1, 64, 1, 1), True)])
def test_the_kernel_matches_pytorchs_layer_norm_over_channels(lanes, shape, blocked):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 2  # an offset mean: the two-pass variance must not cancel
    gamma, beta = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    stored = to_blocked(x.numpy(), lanes) if blocked else x.numpy()
    func = prim_func(stored.shape, 1e-6)
    text = func.script()
    assert "T.parallel" in text and ("T.Shuffle" if blocked else "T.vectorized") in text
    run = tvm.compile(tvm.IRModule({"main": func}), target=host(lanes).tvm)["main"]
    out = tvm.runtime.empty(stored.shape, "float32", tvm.cpu())
    run(*(tvm.runtime.tensor(a) for a in (stored, gamma.numpy(), beta.numpy())), out)
    expected = _reference(x, gamma, beta, 1e-6)
    expected = to_blocked(expected.numpy(), lanes) if blocked else expected.numpy()
    assert relative_error(torch.from_numpy(out.numpy()), torch.from_numpy(expected)) <= 1e-5


@pytest.mark.parametrize("lanes", [8, 16])
def test_padded_channel_blocks_are_normalized_over_their_real_channels_and_keep_zero_pad_lanes(lanes):
    torch.manual_seed(0)
    channels = 2 * lanes + lanes // 2  # 20 or 40: the last block half pad lanes
    x = torch.randn(2, channels, 5, 7) * 3 + 2
    gamma, beta = torch.rand(channels) + 0.5, torch.randn(channels)
    stored = to_blocked(x.numpy(), lanes)
    padded = stored.shape[1] * lanes
    func = prim_func(stored.shape, 1e-6, channels)
    run = tvm.compile(tvm.IRModule({"main": func}), target=host(lanes).tvm)["main"]
    out = tvm.runtime.empty(stored.shape, "float32", tvm.cpu())
    zeros = torch.zeros(padded - channels)
    run(tvm.runtime.tensor(stored), *(tvm.runtime.tensor(torch.cat([v, zeros]).numpy()) for v in (gamma, beta)), out)
    result = torch.from_numpy(out.numpy())
    assert not result[:, -1, :, :, channels % lanes:].any()  # the pad lanes stay zero
    expected = torch.from_numpy(to_blocked(_reference(x, gamma, beta, 1e-6).numpy(), lanes))
    assert relative_error(result, expected) <= 1e-5


@pytest.mark.parametrize("rows, size", [(1, 960), (6, 64), (3, 37), (2, 8)])
def test_the_row_kernel_matches_pytorchs_layer_norm(rows, size):
    from convopt.schedules.layer_norm import row_prim_func

    torch.manual_seed(0)
    x, gamma, beta = torch.randn(rows, size) * 3 + 2, torch.rand(size) + 0.5, torch.randn(size)
    func = row_prim_func(rows, size, 1e-5, 16)
    assert "T.parallel" in func.script()
    assert ("cn_sum_lanes" in func.script()) == (size % 16 == 0 and size >= 32)  # sums of whole vectors
    run = tvm.compile(tvm.IRModule({"main": func}), target=host(16).tvm)["main"]
    out = tvm.runtime.empty((rows, size), "float32", tvm.cpu())
    run(*(tvm.runtime.tensor(a.numpy()) for a in (x, gamma, beta)), out)
    expected = torch.nn.functional.layer_norm(x, (size,), gamma, beta, 1e-5)
    assert relative_error(torch.from_numpy(out.numpy()), expected) <= 1e-5


@pytest.mark.parametrize("lanes", [8, 16])
def test_all_lanes_sum_leaves_the_sum_in_every_lane(lanes):
    ramp = tirx.Ramp(0, 1, lanes)

    @T.prim_func(s_tir=False)
    def summed(x: T.Buffer((3, lanes), "float32"), out: T.Buffer((3, lanes), "float32")):
        for i in range(3):
            out[i, ramp] = all_lanes_sum(x[i, ramp], lanes)

    run = tvm.compile(tvm.IRModule({"main": summed}), target=host(lanes).tvm)["main"]
    x = torch.arange(3 * lanes, dtype=torch.float32).reshape(3, lanes) ** 2
    out = tvm.runtime.empty((3, lanes), "float32", tvm.cpu())
    run(tvm.runtime.tensor(x.numpy()), out)
    assert torch.equal(torch.from_numpy(out.numpy()), x.sum(1, keepdim=True).expand(3, lanes))


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("channels", ["one block", "whole blocks", "a padded block"])
def test_the_blocked_kernel_sums_lanes_with_shuffles_not_gathers(lanes, channels):
    count = {"one block": lanes, "whole blocks": 3 * lanes, "a padded block": 5 * lanes - 3}[channels]
    blocks = -(-count // lanes)
    text = prim_func((1, blocks, 4, 6, lanes), 1e-6, count).script()
    steps = lanes.bit_length() - 1  # log2(lanes) shuffles for the mean, as many for the variance
    assert text.count("T.Shuffle") == 2 * steps
    assert "T.vectorized" not in text and "T.parallel(4)" in text  # whole vectors; parallel over the rows


def test_the_blocked_kernel_refuses_channels_its_blocks_cannot_hold():
    with pytest.raises(ValueError, match="not stored in 2 blocks of 16"):
        prim_func((1, 2, 4, 4, 16), 1e-6, 12)


def test_the_blocked_kernel_states_its_flops_for_the_report():
    from convopt.backends.tvm_backend import kernel_table

    func = prim_func((1, 3, 4, 6, 16), 1e-6, 40)
    assert kernel_table(tvm.IRModule({"convopt_channel_norm": func}))["convopt_channel_norm"]["flops"] == 8 * 3 * 4 * 6 * 16
