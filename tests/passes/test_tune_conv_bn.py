import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import convopt
from convopt.ir import Op
from tests.conftest import rel_err
from tests.passes.test_fold_conv_bn import randomize_bn


def frozen_bn(model: nn.Module) -> nn.Module:
    """Transfer-learning setup: the model trains, its BatchNorms keep their running statistics."""
    randomize_bn(model)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


class Block(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=2), nn.BatchNorm2d(c, affine=False)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(y.mean(dim=(2, 3)))


def grads(module):
    return {k: p.grad.clone() for k, p in module.named_parameters()}


def test_structure_and_state_dict_keys():
    model = frozen_bn(Block())
    x = torch.randn(2, 3, 8, 8)
    fast = convopt.optimize(model, x, mode="train")
    g = fast.graph
    assert [n.op for n in g.nodes].count(Op.CONV2D) == 2 and not [n for n in g.nodes if n.op is Op.BATCH_NORM]
    convs = [n for n in g.nodes if n.op is Op.CONV2D]
    assert all(n.origin.pass_name == "tune_conv_bn" for n in convs)
    assert all(g.node_map[n.inputs[1]].op is Op.MUL for n in convs)  # weights computed in the graph
    expected_keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(fast.state_dict()) == expected_keys
    assert {k for k, p in fast.named_parameters() if p.requires_grad} == {k for k, _ in model.named_parameters()}
    model.load_state_dict(fast.state_dict(), strict=False)  # checkpoints load both ways
    fast.load_state_dict({k: v for k, v in model.state_dict().items() if k in expected_keys})


def test_gradients_equal_eval_mode_and_weights_never_go_stale():
    model = frozen_bn(Block())
    x = torch.randn(4, 3, 8, 8)
    fast = convopt.optimize(model, x, mode="train")
    ref = copy.deepcopy(model)
    opt_fast = torch.optim.SGD(fast.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):  # after each optimizer step the folded weight must follow (pytorch#108863)
        for opt in (opt_fast, opt_ref):
            opt.zero_grad()
        out_fast, out_ref = fast(x), ref(x)
        assert rel_err(out_fast, out_ref) <= 1e-4, step
        out_fast.square().sum().backward()
        out_ref.square().sum().backward()
        g_fast, g_ref = grads(fast), grads(ref)
        for k in g_ref:
            assert rel_err(g_fast[k], g_ref[k]) <= 1e-4, (step, k)
        opt_fast.step()
        opt_ref.step()


def test_keyword_arguments_are_kept():
    class Functional(nn.Module):  # keyword-only calls: inductor's pass dropped these (pytorch#196165)
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.gamma, self.beta = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.randn(4))
            self.register_buffer("mean", torch.randn(4))
            self.register_buffer("var", torch.rand(4) + 0.5)

        def forward(self, x):
            y = F.conv2d(x, self.w, stride=2, padding=1, dilation=1)
            return F.batch_norm(y, self.mean, self.var, weight=self.gamma, bias=self.beta, training=False, eps=1e-3)

    model, x = Functional(), torch.randn(1, 3, 9, 9)
    fast = convopt.optimize(model, x, mode="train")
    conv = next(n for n in fast.graph.nodes if n.op is Op.CONV2D)
    assert conv.attrs.stride == (2, 2) and conv.attrs.padding == (1, 1)
    assert "scalar=0.001" in str(fast.graph)
    assert rel_err(fast(x), model(x)) <= 1e-5


def test_conv_output_is_not_saved_for_backward():
    """Tune mode's point: less activation memory. Count the bytes autograd saves for backward."""
    def saved_bytes(module, x):
        total = 0

        def pack(t):
            nonlocal total
            if t.dim() == 4 and t.shape[0] == x.shape[0]:  # activations (weights have no batch dim)
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        return total

    model = frozen_bn(Block(c=16))
    x = torch.randn(4, 3, 16, 16)
    fast = convopt.optimize(model, x, mode="train")
    eval_mode, tune_mode = saved_bytes(model, x), saved_bytes(fast, x)
    assert tune_mode < 0.8 * eval_mode, (tune_mode, eval_mode)


def test_refuses_when_batchnorm_is_switched_to_training():
    model = frozen_bn(Block())
    fast = convopt.optimize(model, torch.randn(2, 3, 8, 8), mode="train")
    fast.train()  # as model.train() would, this flips the BatchNorms back to batch statistics
    with pytest.raises(RuntimeError, match="BatchNorm 'bn1' was captured in eval mode"):
        fast(torch.randn(2, 3, 8, 8))
    fast.bn1.eval()
    fast.bn2.eval()
    fast(torch.randn(2, 3, 8, 8))
    fast.eval()  # no dropout: eval() computes the same function, so it is allowed
    fast(torch.randn(2, 3, 8, 8))


def test_not_applied_when_conv_output_has_another_reader():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) * y

    fast = convopt.optimize(frozen_bn(TwoReaders()), torch.randn(1, 3, 4, 4), mode="train")
    assert [n.op for n in fast.graph.nodes] == [Op.CONV2D, Op.BATCH_NORM, Op.MUL]


@settings(max_examples=15, deadline=None)
@given(groups=st.sampled_from([1, 2]), k=st.integers(1, 3), stride=st.integers(1, 2), bias=st.booleans(),
       affine=st.booleans())
def test_property_forward_and_gradients(groups, k, stride, bias, affine):
    model = frozen_bn(nn.Sequential(nn.Conv2d(4, 6, k, stride=stride, padding=k // 2, groups=groups, bias=bias),
                                    nn.BatchNorm2d(6, affine=affine)))
    x = torch.randn(2, 4, 7, 7)
    fast = convopt.optimize(model, x, mode="train")
    fast(x).sum().backward()
    model(x).sum().backward()
    g_fast = grads(fast)
    for k_, p in model.named_parameters():
        assert rel_err(g_fast[k_], p.grad) <= 1e-4
