import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convopt import capture
from convopt.backends.torch_backend import to_torch
from convopt.ir import Op, verify
from convopt.passes import canonicalize, fold_constants, fold_conv_bn, merge_branches
from tests.conftest import rel_err
from tests.passes.test_fold_conv_bn import randomize_bn


def conv_bn(cin, cout, k, stride=1, padding=None, groups=1, dilation=1):
    if padding is None:
        padding = tuple(dilation * (kk - 1) // 2 for kk in ((k, k) if isinstance(k, int) else k))
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False), nn.BatchNorm2d(cout))


class Branches(nn.Module):
    """sum(branch(x) for branch in branches) [+ identity], as RepVGG, ACNet, MobileOne, RepGhost write it."""

    def __init__(self, *branches, identity=None):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.identity = identity

    def forward(self, x):
        out = sum(b(x) for b in self.branches)
        if self.identity is not None:
            out = out + (self.identity(x) if isinstance(self.identity, nn.Module) else x)
        return out


def merged(model, x, tol=1e-5):
    model = randomize_bn(model)
    before = canonicalize(capture(model, x))
    after = merge_branches(fold_conv_bn(fold_constants(before)))
    verify(after)
    with torch.no_grad():
        expected = model(x)
        for got, want in zip(to_torch(after)(x), expected if isinstance(expected, tuple) else (expected,)):
            assert rel_err(got, want) <= tol
    return before, after


def convs(g):
    return [n for n in g.nodes if n.op is Op.CONV2D]


def test_repvgg_3x3_1x1_identity_bn_become_one_conv_with_provenance():
    model = Branches(conv_bn(8, 8, 3), conv_bn(8, 8, 1), identity=nn.BatchNorm2d(8))
    _, after = merged(model, torch.randn(2, 8, 9, 9))
    assert [n.op for n in after.nodes] == [Op.CONV2D]
    conv = after.nodes[0]
    assert conv.attrs.padding == (1, 1) and conv.attrs.groups == 1
    assert conv.origin.pass_name == "merge_branches" and len(conv.origin.sources) >= 5
    assert "<- merge_branches(" in str(after)


def test_acnet_asymmetric_kernels():
    model = Branches(conv_bn(6, 6, 3), conv_bn(6, 6, (1, 3)), conv_bn(6, 6, (3, 1)))
    _, after = merged(model, torch.randn(1, 6, 7, 10))
    assert len(after.nodes) == 1 and after.constant_map[after.nodes[0].inputs[1]].type.shape == (6, 6, 3, 3)


def test_depthwise_branches_and_identity_keep_groups():
    model = Branches(conv_bn(8, 8, 3, groups=8), conv_bn(8, 8, 3, groups=8), conv_bn(8, 8, 1, groups=8),
                     identity=nn.BatchNorm2d(8))  # MobileOne's depthwise block
    _, after = merged(model, torch.randn(1, 8, 6, 6))
    assert len(after.nodes) == 1 and after.nodes[0].attrs.groups == 8


def test_grouped_branches_and_plain_identity():
    model = Branches(conv_bn(8, 8, 3, groups=4), conv_bn(8, 8, 1, groups=4), identity=True)
    _, after = merged(model, torch.randn(1, 8, 6, 6))
    assert len(after.nodes) == 1 and after.nodes[0].attrs.groups == 4


def test_strided_branches():
    model = Branches(conv_bn(4, 8, 3, stride=2), conv_bn(4, 8, 1, stride=2, padding=0))
    _, after = merged(model, torch.randn(1, 4, 9, 9))
    assert len(after.nodes) == 1 and after.nodes[0].attrs.stride == (2, 2)


def test_dbb_avg_pool_and_1x1_then_kxk_branches():
    class DBB(nn.Module):
        def __init__(self, c=6):
            super().__init__()
            self.kxk = conv_bn(c, c, 3)
            self.one = conv_bn(c, c, 1)
            self.avg = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(c))
            self.seq = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 3, padding=0), nn.BatchNorm2d(c))

        def forward(self, x):
            # the 1x1 -> 3x3 branch runs unpadded on a padded input, so the inner bias never meets padding
            return self.kxk(x) + self.one(x) + self.avg(x) + self.seq(nn.functional.pad(x, (1, 1, 1, 1)))

    _, after = merged(DBB(), torch.randn(1, 6, 8, 8))
    assert len(convs(after)) == 2  # the padded branch keeps its own (merged 1x1 -> 3x3) conv
    assert not [n for n in after.nodes if n.op in (Op.AVG_POOL2D, Op.BATCH_NORM)]


def test_1x1_then_kxk_sequence_merges_when_exact():
    model = nn.Sequential(nn.Conv2d(4, 6, 1, bias=False), nn.Conv2d(6, 5, 3, padding=1))
    _, after = merged(model, torch.randn(1, 4, 7, 7))
    assert len(convs(after)) == 1
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 5, 1))  # kxk then 1x1
    _, after = merged(model, torch.randn(1, 4, 7, 7))
    assert len(convs(after)) == 1


def test_dilated_branches_merge_into_one_large_kernel():
    model = Branches(conv_bn(4, 4, 7, groups=4), conv_bn(4, 4, 3, groups=4, dilation=2),
                     conv_bn(4, 4, 3, groups=4, dilation=3))  # UniRepLKNet's dilated reparam
    _, after = merged(model, torch.randn(1, 4, 12, 12))
    assert len(after.nodes) == 1
    assert after.nodes[0].attrs.dilation == (1, 1) and after.constant_map[after.nodes[0].inputs[1]].type.shape[2:] == (7, 7)


def test_dilated_branches_alone_keep_their_dilation():
    model = Branches(conv_bn(4, 4, 3, groups=4, dilation=2), conv_bn(4, 4, 3, groups=4, dilation=2))
    _, after = merged(model, torch.randn(1, 4, 12, 12))
    assert len(after.nodes) == 1 and after.nodes[0].attrs.dilation == (2, 2)


def test_scale_branch_and_layer_scale():
    class RepMixer(nn.Module):  # FastViT: x + gamma * (mixer(x) - norm(x))
        def __init__(self, c=6):
            super().__init__()
            self.mixer = conv_bn(c, c, 3, groups=c)
            self.norm = nn.BatchNorm2d(c)
            self.gamma = nn.Parameter(torch.rand(c, 1, 1))

        def forward(self, x):
            return x + self.gamma * (self.mixer(x) - self.norm(x))

    _, after = merged(RepMixer(), torch.randn(1, 6, 5, 5))
    assert [n.op for n in after.nodes] == [Op.CONV2D]


# ---- negative cases


def test_nonlinear_branch_is_not_merged():
    class NonLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv_bn(4, 4, 3), conv_bn(4, 4, 1)

        def forward(self, x):
            return self.a(x) + torch.relu(self.b(x))

    before, after = merged(NonLinear(), torch.randn(1, 4, 5, 5))
    assert len(convs(after)) == 2


def test_branch_read_elsewhere_is_not_merged():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv_bn(4, 4, 3), conv_bn(4, 4, 1)

        def forward(self, x):
            b = self.b(x)
            return self.a(x) + b, b

    before, after = merged(Shared(), torch.randn(1, 4, 5, 5))
    assert len(convs(after)) == 2


def test_misaligned_windows_are_not_merged():
    # same output size, different window centres: 3x3 pad 1 and 2x2 pad 0, both stride 2
    model = Branches(conv_bn(4, 4, 3, stride=2, padding=1), conv_bn(4, 4, 2, stride=2, padding=0))
    _, after = merged(model, torch.randn(1, 4, 8, 8))
    assert len(convs(after)) == 2


def test_different_strides_are_not_merged():
    class Strides(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = conv_bn(4, 4, 3, stride=2)
            self.b = conv_bn(4, 4, 3, stride=1)

        def forward(self, x):
            return self.a(x) + self.b(x)[:, :, ::2, ::2]

    _, after = merged(Strides(), torch.randn(1, 4, 8, 8))
    assert len(convs(after)) == 2


def test_merges_that_cost_more_are_not_made():
    # depthwise 3x3 + dense 1x1 would become a dense 3x3 (more multiply-adds than both)
    model = Branches(conv_bn(8, 8, 3, groups=8), conv_bn(8, 8, 1))
    _, after = merged(model, torch.randn(1, 8, 6, 6))
    assert len(convs(after)) == 2
    # depthwise then pointwise (MobileNet) is not turned into a dense kxk conv
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1))
    _, after = merged(model, torch.randn(1, 8, 6, 6))
    assert len(convs(after)) == 2


def test_padded_kxk_after_biased_1x1_is_not_merged():
    """DBB's padding condition: a padded conv or pool sees zeros where the inner branch would give its bias."""
    model = nn.Sequential(nn.Conv2d(4, 4, 1, bias=True), nn.Conv2d(4, 4, 3, padding=1))
    _, after = merged(model, torch.randn(1, 4, 6, 6))
    assert len(convs(after)) == 2
    model = nn.Sequential(conv_bn(4, 4, 1), nn.AvgPool2d(3, 1, 1))  # BN's shift is a bias, too
    _, after = merged(model, torch.randn(1, 4, 6, 6))
    assert [n.op for n in after.nodes] == [Op.CONV2D, Op.AVG_POOL2D]


# ---- property: random multi-branch blocks


@settings(max_examples=30, deadline=None)
@given(c=st.sampled_from([2, 4]), groups=st.sampled_from([1, 2]),
       kernels=st.lists(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (5, 5)]), min_size=1, max_size=3),
       stride=st.integers(1, 2), identity=st.sampled_from([None, True, "bn"]), hw=st.tuples(st.integers(5, 9), st.integers(5, 9)))
def test_property_random_blocks(c, groups, kernels, stride, identity, hw):
    if stride > 1:
        identity = None
    branches = [conv_bn(c, c, k, stride=stride, groups=groups) for k in kernels]
    ident = nn.BatchNorm2d(c) if identity == "bn" else identity
    model = Branches(*branches, identity=ident)
    _, after = merged(model, torch.randn(2, c, *hw))
    covering = any(all(k[0] >= o[0] and k[1] >= o[1] for o in kernels) for k in kernels)
    if covering:  # merging costs no more than the largest branch: always done
        assert len(convs(after)) == 1
    else:  # 1x3 + 3x1 alone: a 3x3 would cost more multiply-adds than the two, so they may stay apart
        assert len(convs(after)) <= len(kernels)


# ---- whole models: as few convs as timm's own reparameterize_model, equal outputs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0", "repvgg_b1g4", "repvit_m0_9", "fastvit_t8",
                                  "repghostnet_050"])
def test_timm_reparam_families(name):
    import timm
    from timm.utils.model import reparameterize_model

    import convopt

    torch.manual_seed(0)
    model, x = timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 224, 224)
    fast = convopt.optimize(model, x, target="torch")  # check=True: relative error <= 1e-4 vs eager
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    timm_convs = capture(reparameterize_model(model), x).op_counts()["conv2d"]
    assert fast.graph.op_counts()["conv2d"] == timm_convs
    assert len(fast.graph.nodes) < len(capture(model, x).nodes)
