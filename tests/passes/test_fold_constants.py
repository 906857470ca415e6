import math

import torch
import torch.nn.functional as F
from torch import nn

from convopt import capture
from convopt.backends.torch_backend import to_torch
from convopt.ir import Op, verify
from convopt.passes import canonicalize, fold_constants
from tests.conftest import rel_err


class StandardizedConv(nn.Module):
    """An NFNet ScaledStdConv2d: the weight standardized by a functional batch_norm on every call."""

    def __init__(self, cin=4, cout=6):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)
        self.scale = (cin * 9) ** -0.5

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.weight.shape[0], -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=1e-5)
        return F.conv2d(x, w.reshape_as(self.weight), padding=1)


class PositionalEncoding(nn.Module):
    """A sinusoidal encoding computed from the input's shape only (EdgeNeXt style), added to the input."""

    def forward(self, x):
        c, w = x.shape[1], x.shape[3]
        position = torch.arange(w, dtype=torch.float32)
        frequency = torch.exp(torch.arange(c, dtype=torch.float32) * (-math.log(100.0) / c))
        encoding = torch.sin(frequency[:, None] * position[None, :]) + torch.zeros(c, w)
        return x + encoding[None, :, None, :]


def folded(model, x):
    before = canonicalize(capture(model, x))
    text = str(before)
    after = fold_constants(before)
    assert str(before) == text  # the input graph is not changed
    verify(after)
    with torch.no_grad():
        assert rel_err(to_torch(after)(x)[0], model(x)) <= 1e-6
    return before, after


def test_a_chain_over_constants_folds_in_one_run():
    before, after = folded(StandardizedConv().eval(), torch.randn(2, 4, 8, 8))
    assert any(n.op is Op.TORCH and n.attrs.target == "aten.batch_norm.default" for n in before.nodes)
    assert [n.op for n in after.nodes] == [Op.CONV2D]
    assert after.nodes[0].inputs[1] in after.constant_map  # the conv reads the standardized weight


def test_generators_without_tensor_inputs_fold():
    before, after = folded(PositionalEncoding(), torch.randn(1, 6, 3, 5))
    targets = {n.attrs.target for n in before.nodes if n.op is Op.TORCH}
    assert {"aten.arange.start_step", "aten.zeros.default"} & targets or "aten.arange.default" in targets
    assert [n.op for n in after.nodes] == [Op.ADD]
    assert after.nodes[0].inputs[1] in after.constant_map


def test_nodes_reading_inputs_random_ops_and_uninitialized_memory_do_not_fold():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("bias", torch.randn(1, 3, 1, 1))

        def forward(self, x):
            noise = torch.rand_like(self.bias)  # random: folding would freeze one draw
            scratch = torch.empty(1, 3, 1, 1).fill_(2.0)  # empty: its contents are not a value
            return x * noise + scratch

    graph = canonicalize(capture(Noisy(), torch.randn(1, 3, 4, 4)))
    after = fold_constants(graph)
    assert after is graph
    targets = [n.attrs.target for n in after.nodes if n.op is Op.TORCH]
    assert targets == ["aten.rand_like.default", "aten.empty.memory_format", "aten.fill.Scalar"]
    assert any(n.op is Op.MUL and n.inputs[0] == "x" for n in after.nodes)  # reads the input: kept


def test_nothing_to_fold_returns_the_same_graph():
    graph = canonicalize(capture(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), torch.randn(1, 3, 4, 4)))
    assert fold_constants(graph) is graph
