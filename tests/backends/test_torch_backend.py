import pytest
import torch
from torch import nn

from convopt import capture
from convopt.backends.torch_backend import to_torch
from convopt.ir import parse
from tests.conftest import rel_err


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 3))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _net():
    net = Net()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net.eval()


def test_state_dict_keys_and_kinds_follow_the_source_model():
    net = _net()
    module = to_torch(capture(net, torch.randn(2, 3, 5, 5)), trainable=True)
    params = dict(module.named_parameters())
    assert set(params) == {n for n, _ in net.named_parameters()}
    assert all(p.requires_grad for p in params.values())
    assert {"bn.running_mean", "bn.running_var"} <= set(dict(module.named_buffers()))
    frozen = to_torch(capture(net, torch.randn(2, 3, 5, 5)), trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_gradients_match_eager():
    net = _net()
    x = torch.randn(2, 3, 5, 5)
    module = to_torch(capture(net, x), trainable=True)
    module(x)[0].square().sum().backward()
    net(x).square().sum().backward()
    grads = dict(module.named_parameters())
    for name, p in net.named_parameters():
        assert rel_err(grads[name].grad, p.grad) <= 1e-5, name


def test_constants_are_copies_not_aliases_of_the_model():
    net = _net()
    module = to_torch(capture(net, torch.randn(1, 3, 5, 5)))
    assert module.conv.weight.data_ptr() != net.conv.weight.data_ptr()


def test_parsed_graph_needs_constant_values():
    g = capture(_net(), torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="has no value"):
        to_torch(parse(str(g)))
    bound = parse(str(g), constants={c.name: c.data for c in g.constants})
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(to_torch(bound)(x)[0], to_torch(g)(x)[0])
