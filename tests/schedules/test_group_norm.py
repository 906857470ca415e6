"""The group norm kernel against PyTorch: NCHW and in channel blocks of 8 and 16 whose groups are whole
blocks, one group (MobileViT-v2's and PoolFormer's layer norm over C x H x W) and several; its sums are
split over the channels (parallel), and the output pass is parallel and vectorized."""

import pytest
import torch
import tvm
from torch import nn

import convopt
from convopt.ir.layout import to_blocked
from convopt.numerics import relative_error
from convopt.schedules.group_norm import PARTIAL_SUM, group_norm_prim_func, partial_width

from .conv_cases import host


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("shape, groups, blocked", [((1, 64, 32, 32), 1, False), ((2, 48, 7, 9), 4, False),
                                                    ((1, 64, 6, 5), 1, True), ((2, 96, 5, 7), 3, True),
                                                    ((1, 32, 3, 3), 32, False), ((1, 64, 4, 196), 1, False)])
def test_the_kernel_matches_pytorchs_group_norm(lanes, shape, groups, blocked):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 2  # an offset mean: the two-pass variance must not cancel
    gamma, beta = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    stored = to_blocked(x.numpy(), lanes) if blocked else x.numpy()
    n, units, h, w = stored.shape[:4]
    flat = stored.reshape(n, units, h * w, *stored.shape[4:])  # the kernel reads the pixels flattened
    func = group_norm_prim_func(flat.shape, groups, 1e-5, lanes)
    text = func.script()
    # the partial sums run parallel over the channels (or blocks): all the cores share one group's sum
    assert text.count("T.parallel") >= 3 and "T.vectorized" in text and PARTIAL_SUM in text
    run = tvm.compile(tvm.IRModule({"main": func}), target=host(lanes).tvm)["main"]
    out = tvm.runtime.empty(flat.shape, "float32", tvm.cpu())
    run(*(tvm.runtime.tensor(a) for a in (flat, gamma.numpy(), beta.numpy())), out)
    expected = torch.nn.functional.group_norm(x.double(), groups, gamma.double(), beta.double(), 1e-5)
    expected = to_blocked(expected.numpy(), lanes) if blocked else expected.numpy()
    assert relative_error(torch.from_numpy(out.numpy().reshape(stored.shape)), torch.from_numpy(expected)) <= 1e-5


def test_groups_that_split_a_block_are_refused():
    with pytest.raises(ValueError, match="groups must divide"):
        group_norm_prim_func((1, 3, 16, 16), 2, 1e-5, 16)  # 3 blocks in 2 groups


@pytest.mark.parametrize("pixels, lanes, width", [(784, 16, 16), (196, 16, 14), (49, 16, 7), (13, 8, 1), (4, 16, 4)])
def test_partial_sums_take_the_widest_divisor_up_to_a_vector(pixels, lanes, width):
    assert partial_width(pixels, lanes) == width


def test_a_model_runs_convopts_group_norm_kernel():
    class Mixer(nn.Module):  # PoolFormer's block: GroupNorm(1), a pooling token mixer, a GroupNorm(1) MLP
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, padding=1)
            self.norm1, self.norm2 = nn.GroupNorm(1, 32), nn.GroupNorm(4, 32, eps=1e-6)
            self.fc = nn.Conv2d(32, 32, 1)

        def forward(self, x):
            y = self.conv(x)
            y = y + nn.functional.avg_pool2d(self.norm1(y), 3, 1, 1)
            return y + self.fc(self.norm2(y))

    model = Mixer().eval()
    with torch.no_grad():
        model.norm1.weight.uniform_(0.5, 1.5)
        model.norm2.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 12, 10)
    fast = convopt.optimize(model, x, strict=True)  # checked against eager
    assert sum(name.startswith("convopt_group_norm") for name in fast._compiled.kernels) == 2
    with torch.no_grad():
        x2 = torch.randn_like(x)
        assert relative_error(fast(x2), model(x2)) <= 1e-5
