import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import convopt
from convopt import capture
from convopt.backends.torch_backend import to_torch
from convopt.ir import Op, verify
from convopt.passes import canonicalize, fold_conv_bn
from tests.conftest import rel_err


def randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 3)
                if m.affine:
                    m.weight.uniform_(-2, 2)
                    m.bias.uniform_(-1, 1)
    return model.eval()


def folded(model, x):
    g = canonicalize(capture(model, x))
    result = fold_conv_bn(g)
    verify(result)
    with torch.no_grad():
        assert rel_err(to_torch(result)(x)[0], model(x)) <= 1e-5
    return g, result


def ops(g):
    return [n.op for n in g.nodes]


def test_conv_then_bn_structure_and_provenance():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    before, after = folded(model, torch.randn(2, 3, 7, 7))
    assert ops(before) == [Op.CONV2D, Op.BATCH_NORM, Op.RELU]
    assert ops(after) == [Op.CONV2D, Op.RELU]
    conv = after.nodes[0]
    assert conv.origin.pass_name == "fold_conv_bn" and conv.origin.sources == ("conv2d", "batch_norm")
    assert conv.inputs[1:] == ("0.folded_weight", "0.folded_bias")
    assert {c.name for c in after.constants} == {"0.folded_weight", "0.folded_bias"}  # BN's tensors are gone


def test_bias_free_conv_and_affine_free_bn():
    model = randomize_bn(nn.Sequential(nn.Conv2d(4, 6, 3, bias=False, groups=2), nn.BatchNorm2d(6, affine=False)))
    _, after = folded(model, torch.randn(1, 4, 9, 9))
    assert ops(after) == [Op.CONV2D]


def test_linear_then_bn1d():
    model = randomize_bn(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7)))
    _, after = folded(model, torch.randn(3, 5))
    assert ops(after) == [Op.LINEAR]


def test_bn_then_unpadded_conv_and_linear():
    model = randomize_bn(nn.Sequential(nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1, groups=2)))
    _, after = folded(model, torch.randn(1, 6, 5, 5))
    assert ops(after) == [Op.CONV2D]
    model = randomize_bn(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3)))
    _, after = folded(model, torch.randn(4, 5))
    assert ops(after) == [Op.LINEAR]


class _MixedConv(nn.Module):
    """MixNet's mixed-kernel conv: the channels split, a depthwise conv of another kernel size on each part,
    concatenated, one BN (``extra``: a part that is no conv; ``peek``: the concatenation read again)."""

    def __init__(self, extra=False, peek=False):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=b)
                                   for c, k, b in ((4, 3, False), (6, 5, True), (2, 7, False)))
        self.bn, self.extra, self.peek = nn.BatchNorm2d(12 + 3 * extra), extra, peek

    def forward(self, x):
        parts = [conv(p) for conv, p in zip(self.convs, x.split([4, 6, 2], dim=1))]
        y = torch.cat(parts + ([x[:, :3]] if self.extra else []), dim=-3)
        return (self.bn(y), y) if self.peek else self.bn(y)


def test_bn_after_a_concatenation_of_convs_folds_into_each_conv():
    before, after = folded(randomize_bn(_MixedConv()), torch.randn(2, 12, 9, 9))
    assert Op.BATCH_NORM in ops(before) and Op.BATCH_NORM not in ops(after)
    assert ops(after).count(Op.CONV2D) == 3 and ops(after).count(Op.CAT) == 1
    convs = [n for n in after.nodes if n.op is Op.CONV2D]
    assert all(n.origin.pass_name == "fold_conv_bn" and n.origin.sources[-1] == "batch_norm" for n in convs)


@pytest.mark.parametrize("extra, peek", [(True, False), (False, True)])
def test_bn_after_a_concatenation_with_a_part_not_a_conv_or_read_elsewhere_is_kept(extra, peek):
    model = randomize_bn(_MixedConv(extra, peek))
    g = canonicalize(capture(model, torch.randn(2, 12, 9, 9)))
    after = fold_conv_bn(g)
    assert ops(after).count(Op.BATCH_NORM) == 1 and ops(after) == ops(g)


def test_shared_conv_gets_a_folded_weight_per_call_site():
    class Shared(nn.Module):  # the case torch.fx's fuse gets wrong (pytorch#104593)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn2(self.conv(torch.relu(self.bn1(self.conv(x)))))

    model = randomize_bn(Shared())
    _, after = folded(model, torch.randn(1, 4, 6, 6))
    convs = [n for n in after.nodes if n.op is Op.CONV2D]
    assert len(convs) == 2 and convs[0].inputs[1] != convs[1].inputs[1]
    assert not [n for n in after.nodes if n.op is Op.BATCH_NORM]


# ---- negative cases: the pass must not fire


def test_conv_output_read_twice_is_not_folded():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    before, after = folded(randomize_bn(TwoReaders()), torch.randn(1, 3, 4, 4))
    assert after == before


def test_bn_before_padded_conv_is_not_folded():
    model = randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1)))
    before, after = folded(model, torch.randn(1, 3, 6, 6))
    assert after == before


def test_bn1d_on_sequences_is_not_folded_into_linear():
    model = randomize_bn(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(5)))  # normalizes dim 1 of (N, 5, 6)
    before, after = folded(model, torch.randn(2, 5, 4))
    assert after == before


def test_non_constant_weights_are_not_folded():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x, w):
            return self.bn(torch.conv2d(x, w))

    model = randomize_bn(Dynamic())
    x, w = torch.randn(1, 3, 4, 4), torch.randn(2, 3, 1, 1)
    g = capture(model, (x, w))
    assert fold_conv_bn(g) == g


def test_training_bn_is_refused_in_train_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    with pytest.raises(convopt.CaptureError, match="BatchNorm"):
        convopt.optimize(model, torch.randn(2, 3, 4, 4), mode="train")


# ---- property: any conv shape, both directions


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 4), cout=st.integers(1, 4), groups=st.sampled_from([1, 2]), k=st.integers(1, 4),
       stride=st.integers(1, 2), dilation=st.integers(1, 2), bias=st.booleans(), bn_first=st.booleans(),
       hw=st.tuples(st.integers(8, 11), st.integers(8, 11)))
def test_property_folding_is_exact(cin, cout, groups, k, stride, dilation, bias, bn_first, hw):
    cin, cout = cin * groups, cout * groups
    padding = 0 if bn_first else (k // 2) * dilation
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    layers = [nn.BatchNorm2d(cin), conv] if bn_first else [conv, nn.BatchNorm2d(cout)]
    model = randomize_bn(nn.Sequential(*layers))
    _, after = folded(model, torch.randn(2, cin, *hw))
    assert ops(after) == [Op.CONV2D]
