"""fuse_blocks and match_blocks (the patterns it fuses): the blocks found, the fused node and its body, the
dump round trip, where it must not fire, and how the prediction and the user's overrides decide."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convopt.capture import capture_program
from convopt.ir import Op, parse, verify
from convopt.passes import canonicalize, eliminate_dead_code, fold_constants, fold_conv_bn, merge_branches
from convopt.passes.fuse_blocks import fuse_blocks
from convopt.passes.match_blocks import match_blocks


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, BN, ReLU6, depthwise, BN, ReLU6, 1x1 project, BN, + x."""

    def __init__(self, c=16, e=64, o=16, k=3, stride=1, act=nn.ReLU6, se=False, dilation=1, groups=None,
                 same=False, pad_value=0.0):
        super().__init__()
        self.conv_pw = nn.Conv2d(c, e, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(e)
        self.act1 = act()
        self.same, self.pad_value = same, pad_value  # TF "SAME" padding as timm's Conv2dSame pads: a pad op
        self.conv_dw = nn.Conv2d(e, e, k, stride, padding=0 if same else dilation * (k // 2), dilation=dilation,
                                 groups=groups or e, bias=False)
        self.bn2 = nn.BatchNorm2d(e)
        self.act2 = act()
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, 8, 1), nn.ReLU(), nn.Conv2d(8, e, 1),
                                nn.Sigmoid()) if se else None
        self.conv_pwl = nn.Conv2d(e, o, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(o)
        self.residual = stride == 1 and c == o

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_pw(x)))
        if self.same:
            y = F.pad(y, same_padding(y.shape[-2:], self.conv_dw), value=self.pad_value)
        y = self.act2(self.bn2(self.conv_dw(y)))
        if self.se is not None:
            y = y * self.se(y)
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.residual else y


def same_padding(size, conv) -> list[int]:
    """TF "SAME" padding of ``conv`` on a map of ``size`` as F.pad takes it (left, right, top, bottom): the
    total max((ceil(i / s) - 1) s + (k - 1) d + 1 - i, 0) per axis, the odd one more after."""
    totals = [max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
              for i, k, s, d in zip(size, conv.kernel_size, conv.stride, conv.dilation)]
    (th, tw) = totals
    return [tw // 2, tw - tw // 2, th // 2, th - th // 2]


def _graph(model, shape=(1, 16, 12, 12)):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    graph = capture_program(model.eval(), torch.randn(shape)).graph
    for p in (canonicalize, fold_conv_bn, eliminate_dead_code):
        graph = p(graph)
    return graph


def _fused(graph):
    return [n for n in graph.nodes if n.op is Op.FUSED_BLOCK]


def test_an_inverted_residual_becomes_one_node_that_keeps_its_body():
    before = _graph(InvertedResidual())
    after = fuse_blocks(before)
    (block,) = _fused(after)
    assert [n.op for n in after.nodes] == [Op.FUSED_BLOCK] and after.outputs == (block.name,)
    body = block.attrs.body
    assert [n.op for n in body] == [Op.CONV2D, Op.CLAMP, Op.CONV2D, Op.CLAMP, Op.CONV2D, Op.ADD]
    assert body == tuple(n for n in before.nodes)  # names, scopes and provenance kept
    assert block.inputs[0] == before.inputs[0].name and set(block.inputs[1:]) <= set(before.constant_map)
    assert block.scope == "conv_pw" and block.origin.pass_name == "fuse_blocks"  # no shared module: the first
    assert before.nodes[0].op is Op.CONV2D  # the input graph is not mutated
    verify(after)  # runs the body on meta tensors and checks the block's type
    text = str(after)
    assert "fused_block(" in text and text.count("    | %") == 6
    assert parse(text, constants={c.name: c.data for c in after.constants}) == after


def test_the_fused_body_computes_the_block_in_the_torch_backend():
    from convopt.backends.torch_backend import to_torch

    model = InvertedResidual(stride=2, o=24, k=5).eval()
    x = torch.randn(2, 16, 13, 13)
    after = fuse_blocks(_graph(model, x.shape))
    assert len(_fused(after)) == 1 and not _fused(after)[0].attrs.body[-1].op is Op.ADD  # no residual at stride 2
    with torch.no_grad():
        (got,) = to_torch(after)(x)
        assert torch.allclose(got, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model, why", [
    (InvertedResidual(act=nn.Sigmoid), "an activation with act(0) != 0"),
    (InvertedResidual(groups=4), "a grouped, not depthwise, middle conv"),
    (InvertedResidual(dilation=2), "a dilated depthwise conv"),
    (InvertedResidual(k=9), "a depthwise kernel larger than 7"),
    (InvertedResidual(stride=2, same=True, pad_value=1.0), "a pad op that pads with 1, not 0"),
])
def test_blocks_the_kernel_does_not_compute_are_left_alone(model, why):
    graph = _graph(model)
    assert fuse_blocks(graph) == graph, why


@pytest.mark.parametrize("k, stride, size, pads", [(3, 2, 12, (0, 0, 1, 1)), (5, 2, 12, (1, 1, 2, 2)),
                                                   (3, 2, 13, (1, 1, 1, 1)), (3, 1, 12, (1, 1, 1, 1))])
def test_tf_same_padding_joins_the_block_as_its_pad_op(k, stride, size, pads):
    """timm's Conv2dSame: a zero pad op (asymmetric on even maps at stride 2), then an unpadded depthwise conv."""
    from convopt.backends.torch_backend import to_torch

    model = InvertedResidual(16, 64, 16, k, stride, same=True).eval()
    x = torch.randn(1, 16, size, size)
    before = _graph(model, x.shape)
    (block,) = match_blocks(before)
    assert block.pads == pads and block.residual == (stride == 1)
    after = fuse_blocks(before)
    (fused,) = _fused(after)
    assert [n.op for n in fused.attrs.body][:5] == [Op.CONV2D, Op.CLAMP, Op.TORCH, Op.CONV2D, Op.CLAMP]
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after
    with torch.no_grad():
        (got,) = to_torch(after)(x)
        assert torch.allclose(got, model(x), rtol=1e-4, atol=1e-5)


def test_an_intermediate_read_elsewhere_is_not_fused():
    class Tapped(InvertedResidual):
        def forward(self, x):
            mid = self.act1(self.bn1(self.conv_pw(x)))
            y = self.bn3(self.conv_pwl(self.act2(self.bn2(self.conv_dw(mid)))))
            return y + x, mid  # the expanded map is an output: it must be stored

    graph = _graph(Tapped())
    assert match_blocks(graph) == [] and fuse_blocks(graph) == graph


def test_the_prediction_and_the_overrides_decide():
    graph = _graph(InvertedResidual())
    assert fuse_blocks(graph, predict=lambda g, b: (2e-6, 1e-6)) == graph  # predicted slower fused
    assert fuse_blocks(graph, predict=lambda g, b: None) == graph  # no prediction: unfused
    assert fuse_blocks(graph, predict=lambda g, b: (1e-6, 1.2e-6), margin=1.25) == graph  # not faster by the margin
    assert _fused(fuse_blocks(graph, predict=lambda g, b: (1e-6, 1.3e-6), margin=1.25))
    assert fuse_blocks(graph, predict=lambda g, b: (1e-6, 1.3e-6), margin=lambda b: 1.5) == graph  # per block
    fused = fuse_blocks(graph, predict=lambda g, b: (1e-6, 3e-6))
    assert dict(_fused(fused)[0].attrs.predicted_us) == {"fused": 1.0, "unfused": 3.0}
    assert fuse_blocks(graph, predict=lambda g, b: (1e-6, 3e-6), overrides={"conv_pw": False}) == graph
    forced = fuse_blocks(graph, predict=lambda g, b: (2e-6, 1e-6), overrides={graph.nodes[0].name: True})
    assert len(_fused(forced)) == 1


def test_a_block_holding_a_conv_whose_lowering_was_chosen_is_fused_only_when_forced():
    graph = _graph(InvertedResidual())
    faster = lambda g, b: (1e-6, 3e-6)  # noqa: E731
    assert fuse_blocks(graph, predict=faster, pinned=frozenset({"conv_dw"})) == graph  # by module scope
    dw = next(n for n in graph.nodes if n.scope == "conv_dw")
    assert fuse_blocks(graph, predict=faster, pinned=frozenset({dw.name})) == graph  # by node name
    assert _fused(fuse_blocks(graph, predict=faster, pinned=frozenset({"elsewhere"})))
    forced = fuse_blocks(graph, predict=faster, pinned=frozenset({"conv_dw"}), overrides={"conv_pw": True})
    assert len(_fused(forced)) == 1


def test_two_blocks_in_a_row_fuse_separately_and_keep_their_order():
    model = nn.Sequential(InvertedResidual(), InvertedResidual(o=24), nn.Sigmoid())  # sigmoid(0) != 0: not taken
    after = fuse_blocks(_graph(model))
    assert [n.op for n in after.nodes] == [Op.FUSED_BLOCK, Op.FUSED_BLOCK, Op.SIGMOID]
    first, second, sigmoid = after.nodes
    assert second.inputs[0] == first.name and sigmoid.inputs == (second.name,)
    assert (first.scope, second.scope) == ("0", "1")
    verify(after)


@pytest.mark.parametrize("residual", [True, False])
def test_the_activation_after_a_block_joins_it(residual):
    """MobileOne's blocks end in a ReLU after the projection (after the add with a residual): the kernel
    applies it, so it runs in no kernel of its own."""
    from convopt.backends.torch_backend import to_torch

    model = nn.Sequential(InvertedResidual(o=16 if residual else 24, act=nn.ReLU), nn.ReLU()).eval()
    x = torch.randn(1, 16, 12, 12)
    before = _graph(model, x.shape)
    after = fuse_blocks(before)
    (fused,) = after.nodes
    assert fused.op is Op.FUSED_BLOCK and [n.op for n in fused.attrs.body][-2:] == (
        [Op.ADD, Op.RELU] if residual else [Op.CONV2D, Op.RELU])
    (block,) = match_blocks(before)
    assert block.out_activation == "relu" and block.residual == residual
    verify(after)
    with torch.no_grad():
        (got,) = to_torch(after)(x)
        assert torch.allclose(got, model(x), rtol=1e-4, atol=1e-5)


def test_an_activation_after_a_block_that_reads_more_than_it_stays_out():
    class Tapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = InvertedResidual(o=24, act=nn.ReLU)

        def forward(self, x):
            y = self.block(x)
            return torch.relu(y), y  # the projection's value is an output: the block ends at it

    (block,) = match_blocks(_graph(Tapped()))
    assert block.out_activation == "none" and block.nodes[-1].op is Op.CONV2D


def test_a_squeeze_excite_block_is_fused_up_to_its_second_activation():
    before = _graph(InvertedResidual(se=True))
    after = fuse_blocks(before)
    block, se = _fused(after)
    assert block.attrs.kind == "expand_depthwise"
    assert [n.op for n in block.attrs.body] == [Op.CONV2D, Op.CLAMP, Op.CONV2D, Op.CLAMP]
    # the squeeze-excite (pool, two 1x1 convs, sigmoid, scale) and the projection read the fused value
    readers = [n for n in after.nodes if block.name in n.inputs]
    assert {n.op for n in readers} == {Op.FUSED_BLOCK, Op.MUL} and se in readers
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def test_a_squeeze_excite_is_one_node_ending_in_its_gate_where_the_projection_takes_the_scale():
    """12 x 12 px and a 64 -> 16 projection: O KH KW <= H W / 8, so fold_channel_scale will move the gate into
    the projection's weight, and the block leaves the multiply out."""
    after = fuse_blocks(_graph(InvertedResidual(se=True)))
    _, se = _fused(after)
    assert se.attrs.kind == "squeeze_excite"
    assert [n.op for n in se.attrs.body] == [Op.ADAPTIVE_AVG_POOL2D, Op.CONV2D, Op.RELU, Op.CONV2D, Op.SIGMOID]
    assert se.type.shape == (1, 64, 1, 1)
    (mul,) = [n for n in after.nodes if n.op is Op.MUL]
    assert se.name in mul.inputs and sum(n.op is Op.CONV2D for n in after.nodes) == 1  # the projection alone


def test_a_squeeze_excite_whose_scale_stays_ends_in_the_scaled_map():
    """A 64 -> 32 projection on 12 x 12 px: its weight (2048 values) is more than x's 1/8, the multiply stays and
    joins the block."""
    after = fuse_blocks(_graph(InvertedResidual(se=True, o=32)))
    _, se = _fused(after)
    assert se.attrs.kind == "squeeze_excite" and se.attrs.body[-1].op is Op.MUL
    assert se.type.shape == (1, 64, 12, 12) and not any(n.op is Op.MUL for n in after.nodes)


class Gated(nn.Module):
    """A squeeze-excite on a conv's output with variations that must keep it unfused."""

    def __init__(self, pool=None, reduce_kernel=1, gate_is_output=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = pool or nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(32, 8, reduce_kernel, padding=reduce_kernel // 2)
        self.expand = nn.Conv2d(8, 32, 1)
        self.gate_is_output = gate_is_output

    def forward(self, x):
        y = self.conv(x)
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(self.pool(y)))))
        out = y * gate
        return (out, gate) if self.gate_is_output else out


@pytest.mark.parametrize("model, fused", [(Gated(), True), (Gated(pool=nn.AdaptiveMaxPool2d(1)), False),
                                          (Gated(reduce_kernel=3), False), (Gated(gate_is_output=True), False)],
                         ids=["fused", "a max pool", "a 3x3 reduce conv", "the gate read elsewhere"])
def test_only_a_global_pool_two_one_pixel_convs_and_a_gate_read_once_are_a_squeeze_excite(model, fused):
    kinds = [n.attrs.kind for n in _fused(fuse_blocks(_graph(model, (1, 3, 10, 10))))]
    assert ("squeeze_excite" in kinds) == fused  # (other kinds may take parts: the 3x3 pair is a conv pair)


def test_a_fused_squeeze_excite_computes_what_its_body_does():
    model = Gated()
    x = torch.randn(1, 3, 10, 10)
    after = fuse_blocks(_graph(model, tuple(x.shape)))
    assert [n.attrs.kind for n in _fused(after)] == ["squeeze_excite"]
    from convopt.backends.torch_backend import to_torch
    with torch.no_grad():
        (got,) = to_torch(after)(x)
        assert torch.allclose(got, model.eval()(x), rtol=1e-4, atol=1e-5)


class ChannelMLP(nn.Module):
    """ConvNeXt's block with its MLP as 1x1 convs: depthwise 7x7, norm, 1x1 expand, act, 1x1 project,
    layer scale, + the block's input."""

    def __init__(self, c=16, e=64, act=nn.GELU, residual=True, norm=True):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.BatchNorm2d(c) if norm else nn.Identity()
        self.fc1 = nn.Conv2d(c, e, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(e, c, 1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.residual = residual

    def forward(self, x):
        y = self.fc2(self.act(self.fc1(self.norm(self.conv_dw(x))))) * self.gamma
        return y + x if self.residual else y


def test_a_channel_mlp_becomes_one_node_whose_skip_is_the_block_input():
    before = merge_branches(fold_constants(_graph(ChannelMLP())))
    after = fuse_blocks(before)
    (block,) = _fused(after)
    assert block.attrs.kind == "pointwise_mlp"
    assert [n.op for n in block.attrs.body] == [Op.CONV2D, Op.GELU, Op.CONV2D, Op.ADD]
    assert [n.op for n in after.nodes] == [Op.CONV2D, Op.FUSED_BLOCK]  # the depthwise conv stays separate
    dw = after.nodes[0]
    non_constant = [i for i in block.inputs if i not in after.constant_map]
    assert non_constant == [dw.name, after.inputs[0].name]  # the MLP's input, then the skip
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def test_a_channel_mlp_without_a_residual_ends_at_its_projection():
    after = fuse_blocks(merge_branches(fold_constants(_graph(ChannelMLP(residual=False, act=nn.ReLU)))))
    (block,) = _fused(after)
    assert [n.op for n in block.attrs.body] == [Op.CONV2D, Op.RELU, Op.CONV2D]
    verify(after)


@pytest.mark.parametrize("model, shape, why", [
    (ChannelMLP(act=nn.Sigmoid), (1, 16, 12, 12), "an activation with act(0) != 0"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1)), (1, 16, 12, 12),
     "one pixel: a squeeze-excite's matrix-vector products"),
    (nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU(), nn.Conv2d(64, 16, 3, padding=1)), (1, 16, 12, 12),
     "a projection that is not 1x1"),
    (nn.Sequential(nn.Conv2d(16, 64, 1, stride=2), nn.ReLU(), nn.Conv2d(64, 16, 1)), (1, 16, 12, 12),
     "a strided expand"),
])
def test_pointwise_mlps_the_kernel_does_not_compute_are_left_alone(model, shape, why):
    graph = _graph(model, shape)
    assert match_blocks(graph, ("pointwise_mlp",)) == [] and fuse_blocks(graph, kinds=("pointwise_mlp",)) == graph, why
    assert {b.kind for b in match_blocks(graph)} <= {"conv_pair"}  # 1x1 -> act -> 3x3 is a pair: another kind


def test_a_channel_mlp_whose_hidden_value_is_read_elsewhere_or_whose_add_broadcasts_is_not_fused_whole():
    class Tapped(ChannelMLP):
        def forward(self, x):
            hidden = self.act(self.fc1(x))
            return self.fc2(hidden) + x, hidden

    assert match_blocks(_graph(Tapped())) == []

    class Broadcast(ChannelMLP):
        def forward(self, x):
            return self.fc2(self.act(self.fc1(x))) + x.mean((2, 3), keepdim=True)

    (block,) = match_blocks(_graph(Broadcast()))
    assert not block.residual and block.nodes[-1].op is Op.CONV2D  # the broadcasting add stays outside


def test_an_inverted_residual_is_matched_before_an_mlp_that_would_take_its_expand_conv():
    """1x1 -> ReLU -> [1x1 expand -> act -> depthwise -> act -> 1x1 + x]: the first three ops also form an MLP
    (1x1, act, 1x1); the inverted residual keeps its expand conv and the first conv stays alone."""
    model = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU(), InvertedResidual(), ChannelMLP(norm=False))
    blocks = match_blocks(_graph(model))
    assert [b.kind for b in blocks] == ["inverted_residual", "pointwise_mlp"]
    assert blocks[0].nodes[0].scope == "2.conv_pw" and "0" not in {n.scope for b in blocks for n in b.nodes}


class ResidualMLP(nn.Module):
    """RepViT's channel mixer: x + fc2(act(fc1(x))), the skip being the MLP's own input, first in the add."""

    def __init__(self, c=16, e=32):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, e, 1), nn.GELU(), nn.Conv2d(e, c, 1)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


def test_an_mlp_whose_skip_is_its_own_input_and_comes_first_in_the_add():
    after = fuse_blocks(_graph(ResidualMLP()))
    (block,) = _fused(after)
    assert block.attrs.kind == "pointwise_mlp" and block.attrs.body[-1].op is Op.ADD
    assert [i for i in block.inputs if i not in after.constant_map] == [after.inputs[0].name]  # x, once
    verify(after)


class BasicBlock(nn.Module):
    """ResNet's basic block: 3x3 (stride), BN, ReLU, 3x3, BN, + x (or its 1x1 downsampled copy), ReLU."""

    def __init__(self, c=16, o=16, stride=1, k=3, act=nn.ReLU, groups=1, dilation=1, skip=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c, o, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(o), act()
        self.conv2 = nn.Conv2d(o, o, k, padding=k // 2, groups=groups, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(o), nn.ReLU()
        self.skip = skip
        self.downsample = (nn.Sequential(nn.Conv2d(c, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                           if stride != 1 or c != o else None)

    def forward(self, x):
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if not self.skip:
            return self.act2(y)
        return self.act2(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1, BN, ReLU, 3x3 (stride), BN, ReLU, 1x1, BN, + x (or its downsampled copy), ReLU."""

    def __init__(self, c=32, m=8, o=32, stride=1):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(c, m, 1, bias=False), nn.BatchNorm2d(m), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(m, m, 3, stride, 1, bias=False), nn.BatchNorm2d(m), nn.ReLU()
        self.conv3, self.bn3, self.act3 = nn.Conv2d(m, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(c, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                           if stride != 1 or c != o else None)

    def forward(self, x):
        y = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        y = self.bn3(self.conv3(y))
        return self.act3(y + (x if self.downsample is None else self.downsample(x)))


def test_a_basic_block_becomes_one_conv_pair_with_its_add_and_relu():
    before = _graph(BasicBlock())
    after = fuse_blocks(before)
    (block,) = _fused(after)
    assert block.attrs.kind == "conv_pair" and [n.op for n in after.nodes] == [Op.FUSED_BLOCK]
    assert [n.op for n in block.attrs.body] == [Op.CONV2D, Op.RELU, Op.CONV2D, Op.ADD, Op.RELU]
    assert block.attrs.body == before.nodes and block.scope == "conv1"  # no shared module: the first
    assert [i for i in block.inputs if i not in after.constant_map] == [before.inputs[0].name]  # x, read twice
    verify(after)
    text = str(after)
    assert text.count("    | %") == 5 and parse(text, constants={c.name: c.data for c in after.constants}) == after


def test_a_downsampling_basic_block_adds_the_downsampled_input():
    after = fuse_blocks(_graph(BasicBlock(16, 24, stride=2)))
    (block,) = _fused(after)
    downsample = next(n for n in after.nodes if n.op is Op.CONV2D)  # the 1x1 stride-2 conv stays separate
    assert block.attrs.kind == "conv_pair" and block.attrs.body[3].op is Op.ADD
    assert downsample.name in block.inputs
    verify(after)


def test_a_bottleneck_becomes_one_node():
    after = fuse_blocks(_graph(Bottleneck(), (1, 32, 12, 12)))
    (block,) = _fused(after)
    assert block.attrs.kind == "bottleneck"
    assert [n.op for n in block.attrs.body] == [Op.CONV2D, Op.RELU, Op.CONV2D, Op.RELU, Op.CONV2D, Op.ADD, Op.RELU]
    verify(after)


def test_a_vgg_chain_is_paired_in_order():
    """conv-ReLU x 5 (RepVGG after reparameterization, VGG): two pairs, each with its closing ReLU, and the
    fifth conv alone."""
    layers = []
    for c, o, s in ((16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 24, 1), (24, 32, 2)):
        layers += [nn.Conv2d(c, o, 3, s, 1), nn.ReLU()]
    after = fuse_blocks(_graph(nn.Sequential(*layers)))
    assert [n.op for n in after.nodes] == [Op.FUSED_BLOCK, Op.FUSED_BLOCK, Op.CONV2D, Op.RELU]
    assert [n.scope for n in _fused(after)] == ["0", "4"]  # the blocks start at modules 0 and 4
    assert all(n.attrs.body[-1].op is Op.RELU and not any(b.op is Op.ADD for b in n.attrs.body)
               for n in _fused(after))
    verify(after)


@pytest.mark.parametrize("model, why", [
    (BasicBlock(groups=4), "a grouped second conv"),
    (BasicBlock(dilation=2), "a dilated first conv"),
    (BasicBlock(k=9), "kernels above 7x7"),
    (BasicBlock(act=nn.Sigmoid), "an activation inside with act(0) != 0"),
    (nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)), "no activation between"),
    (nn.Sequential(nn.Conv2d(16, 16, 2), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)), "an even kernel"),
    (nn.Sequential(nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)), "no padding (not 'same')"),
    (nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1, stride=2)),
     "a second conv whose stride exceeds its kernel"),
])
def test_chains_the_kernel_does_not_compute_are_left_alone(model, why):
    graph = _graph(model)
    assert match_blocks(graph) == [] and fuse_blocks(graph) == graph, why


def test_a_chain_whose_intermediate_is_read_elsewhere_is_not_fused():
    class Output(BasicBlock):  # the activation is a graph output
        def forward(self, x):
            mid = self.act1(self.bn1(self.conv1(x)))
            return self.act2(self.bn2(self.conv2(mid)) + x), mid

    class SecondReader(BasicBlock):  # the activation feeds another op too
        def forward(self, x):
            mid = self.act1(self.bn1(self.conv1(x)))
            return self.act2(self.bn2(self.conv2(mid)) + x) * mid.mean()

    class PreActivation(BasicBlock):  # the first conv's sum, before its activation, read by another op
        def forward(self, x):
            pre = self.bn1(self.conv1(x))
            return self.act2(self.bn2(self.conv2(self.act1(pre))) + x) + pre

    for model in (Output(), SecondReader(), PreActivation()):
        assert match_blocks(_graph(model)) == [], type(model).__name__


def test_a_chain_ends_before_an_add_it_cannot_take():
    class Broadcast(BasicBlock):  # the add broadcasts a pooled value: not a skip of the output's shape
        def forward(self, x):
            return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + x.mean((2, 3), keepdim=True)

    class Doubled(BasicBlock):  # y + y: the other operand is the chain's own value
        def forward(self, x):
            y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
            return y + y

    for model in (Broadcast(), Doubled()):
        (block,) = match_blocks(_graph(model))
        assert not block.residual and block.nodes[-1].op is Op.CONV2D, type(model).__name__


def test_a_bottleneck_with_a_3x3_first_conv_is_a_pair_and_a_lone_conv():
    model = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 1))
    (block,) = match_blocks(_graph(model))
    assert block.kind == "conv_pair" and block.out_activation == "relu" and len(block.convs) == 2


def test_kinds_limit_what_is_fused_and_forced_names_that_match_nothing_warn():
    graph = _graph(nn.Sequential(BasicBlock(), InvertedResidual()))
    assert [b.kind for b in match_blocks(graph)] == ["inverted_residual", "conv_pair"]
    assert [b.kind for b in match_blocks(graph, ("inverted_residual",))] == ["inverted_residual"]
    with pytest.warns(UserWarning, match="'?0'? names no block"):
        after = fuse_blocks(graph, predict=lambda g, b: None, overrides={"0": True, "1": True},
                            kinds=("inverted_residual",))
    assert [n.attrs.kind for n in _fused(after)] == ["inverted_residual"]
    with pytest.warns(UserWarning, match="layer9 names no block"):
        fuse_blocks(graph, overrides={"layer9": True})


def test_a_block_the_target_refuses_stays_unfused_with_a_warning_naming_it():
    graph = _graph(nn.Sequential(BasicBlock(), BasicBlock()))
    refuse = lambda block: "too wide" if block.nodes[0].scope.startswith("1") else None  # noqa: E731
    with pytest.warns(UserWarning, match=r"block 1 \(conv_pair\) is not fused: too wide"):
        after = fuse_blocks(graph, predict=lambda g, b: None, overrides={"0": True, "1": True}, refuse=refuse)
    assert [n.scope for n in _fused(after)] == ["0"]


class ConvNeXtBlock(nn.Module):
    """timm's ConvNeXt block (conv MLP form): depthwise kxk, LayerNorm2d, 1x1 expand, GELU, 1x1 project,
    layer scale, + the block's input."""

    def __init__(self, c=16, e=64, k=7, stride=1):
        from timm.layers import LayerNorm2d

        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c)
        self.norm = LayerNorm2d(c)
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, e, 1), nn.GELU(), nn.Conv2d(e, c, 1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        y = self.fc2(self.act(self.fc1(self.norm(self.conv_dw(x))))) * self.gamma
        return y + x if self.conv_dw.stride == (1, 1) else y


def test_a_convnext_block_becomes_one_node_with_its_depthwise_conv_and_norm():
    before = merge_branches(fold_constants(_graph(ConvNeXtBlock())))
    after = fuse_blocks(before)
    (block,) = _fused(after)
    assert block.attrs.kind == "convnext_block"
    assert [n.op for n in block.attrs.body] == [Op.CONV2D, Op.CHANNEL_NORM, Op.CONV2D, Op.GELU, Op.CONV2D, Op.ADD]
    assert [n.op for n in after.nodes] == [Op.FUSED_BLOCK]
    non_constant = [i for i in block.inputs if i not in after.constant_map]
    assert non_constant == [after.inputs[0].name]  # the input is the skip
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def test_a_mixer_the_kernel_cannot_take_leaves_the_mlp_alone():
    class NormReadTwice(ConvNeXtBlock):
        def forward(self, x):
            u = self.norm(self.conv_dw(x))
            return self.fc2(self.act(self.fc1(u))) * self.gamma + x + u

    strided = merge_branches(fold_constants(_graph(ConvNeXtBlock(stride=2))))
    assert [b.kind for b in match_blocks(strided)] == ["pointwise_mlp"]  # a strided depthwise conv
    shared = merge_branches(fold_constants(_graph(NormReadTwice())))
    assert [b.kind for b in match_blocks(shared)] == ["pointwise_mlp"]  # the norm's output read elsewhere
    whole = merge_branches(fold_constants(_graph(ConvNeXtBlock(k=13))))
    assert [b.kind for b in match_blocks(whole)] == ["pointwise_mlp"]  # a 13x13 mixer
    graph = merge_branches(fold_constants(_graph(ConvNeXtBlock())))
    assert [b.kind for b in match_blocks(graph, ("pointwise_mlp",))] == ["pointwise_mlp"]  # kinds limit the match


def _inception_block(c=16, band=5):
    from timm.models.inception_next import InceptionDWConv2d, MetaNeXtBlock

    return MetaNeXtBlock(c, token_mixer=lambda dim, **kw: InceptionDWConv2d(dim, band_kernel_size=band, **kw),
                         ls_init_value=0.5)


def test_an_inception_next_block_becomes_one_node_with_its_token_mixer():
    """InceptionNeXt's token mixer (split into an identity part and three depthwise convs, concatenated; its
    BatchNorm folded into the MLP's first conv) joins the MLP: one node whose body keeps the split and the cat."""
    before = merge_branches(fold_constants(_graph(_inception_block())))
    (block,) = match_blocks(before)
    assert block.kind == "convnext_block" and not block.norm and block.mixer.kernel == (5, 5)
    assert block.mixer_taps == 9 + 2 + 2  # the 3x3, 1x5 and 5x1 kernels, centred: the taps the kernel computes
    (fused,) = _fused(fuse_blocks(before, predict=lambda g, b: None, overrides={"": True}))
    ops = [n.op for n in fused.attrs.body]
    assert ops[:5] == [Op.SPLIT] + [Op.GETITEM] * 4 and ops.count(Op.CONV2D) == 5 and Op.CAT in ops
    assert ops[-4:] == [Op.CONV2D, Op.GELU, Op.CONV2D, Op.ADD]
    after = fuse_blocks(before, predict=lambda g, b: None, overrides={"": True})
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def test_an_inception_mixer_the_kernel_cannot_take_leaves_the_mlp_alone():
    from timm.models.inception_next import InceptionDWConv2d

    class PartReadTwice(nn.Module):  # the mixer's output also read after the MLP
        def __init__(self, c=16):
            super().__init__()
            self.mixer = InceptionDWConv2d(c, band_kernel_size=5)
            self.fc1, self.act, self.fc2 = nn.Conv2d(c, 4 * c, 1), nn.GELU(), nn.Conv2d(4 * c, c, 1)

        def forward(self, x):
            mixed = self.mixer(x)
            return self.fc2(self.act(self.fc1(mixed))) + x + mixed

    shared = merge_branches(fold_constants(_graph(PartReadTwice())))
    assert [b.kind for b in match_blocks(shared)] == ["pointwise_mlp", "token_mixer"]  # the mixer on its own
    wide = merge_branches(fold_constants(_graph(_inception_block(band=13), shape=(1, 16, 14, 14))))
    # a 13-wide band: above the MLP kernel's 11; the mixer is a block of its own (schedules/token_mixer.py)
    assert [b.kind for b in match_blocks(wide)] == ["pointwise_mlp", "token_mixer"]


def test_an_inception_block_not_chosen_whole_is_weighed_as_its_mlp_and_its_token_mixer():
    graph = merge_branches(fold_constants(_graph(_inception_block())))

    def whole_loses(g, block):  # (fused, unfused) seconds
        return (2.0, 1.0) if block.kind == "convnext_block" else (1.0, 2.0)

    kinds = [n.attrs.kind for n in _fused(fuse_blocks(graph, predict=whole_loses))]
    assert kinds == ["token_mixer", "pointwise_mlp"]
    # the MLP predicted slower too: the mixer alone, by rule (no prediction asked)
    (mixer,) = _fused(fuse_blocks(graph, predict=lambda g, b: (2.0, 1.0)))
    ops = [n.op for n in mixer.attrs.body]
    assert mixer.attrs.kind == "token_mixer" and ops[0] is Op.SPLIT and ops[-1] is Op.CAT and ops.count(Op.CONV2D) == 3
    refused = fuse_blocks(graph, predict=lambda g, b: (2.0, 1.0), overrides={"token_mixer": False})
    assert _fused(refused) == []  # a rule the user can turn off by the module's name


def test_a_token_mixer_with_no_mlp_after_it_is_a_block_of_its_own():
    from timm.models.inception_next import InceptionDWConv2d

    class Mixer(nn.Module):
        def __init__(self, c=32):
            super().__init__()
            self.stem, self.mixer, self.head = nn.Conv2d(3, c, 3, padding=1), InceptionDWConv2d(c), nn.Conv2d(c, 8, 3)

        def forward(self, x):
            return self.head(self.mixer(self.stem(x)))

    graph = _graph(Mixer(), shape=(1, 3, 13, 13))
    (block,) = match_blocks(graph)
    assert block.kind == "token_mixer" and block.mixer.kernel == (11, 11)
    assert block.channel_taps == 4 * (9 + 11 + 11)  # the branches' own taps: 3x3, 1x11, 11x1 of 4 channels each
    assert [n.attrs.kind for n in _fused(fuse_blocks(graph, predict=lambda g, b: (2.0, 1.0)))] == ["token_mixer"]


class StridedBranch(nn.Module):
    """A split whose parts meet in a cat, one through a conv the mixer can't be: strided or not depthwise."""

    def __init__(self, stride=1, groups=8):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, stride, padding=1, groups=groups)
        self.stride = stride

    def forward(self, x):
        a, b = torch.split(self.stem(x), [8, 8], dim=1)
        return torch.cat([a[:, :, ::self.stride, ::self.stride], self.conv(b)], dim=1)


@pytest.mark.parametrize("model", [StridedBranch(stride=2), StridedBranch(groups=1)], ids=["strided", "dense"])
def test_only_stride_1_depthwise_branches_make_a_token_mixer(model):
    assert "token_mixer" not in [b.kind for b in match_blocks(_graph(model, shape=(1, 3, 12, 12)))]


def test_a_convnext_block_not_chosen_whole_is_weighed_as_its_mlp():
    graph = merge_branches(fold_constants(_graph(ConvNeXtBlock())))

    def whole_loses(g, block):  # (fused, unfused) seconds
        return (2.0, 1.0) if block.kind == "convnext_block" else (1.0, 2.0)

    (block,) = _fused(fuse_blocks(graph, predict=whole_loses))
    assert block.attrs.kind == "pointwise_mlp"
    assert [n.op for n in fuse_blocks(graph, predict=whole_loses).nodes] == [Op.CONV2D, Op.CHANNEL_NORM,
                                                                             Op.FUSED_BLOCK]
    assert _fused(fuse_blocks(graph, predict=lambda g, b: (2.0, 1.0))) == []  # both lose: nothing fused


class NestedConvNeXt(nn.Module):
    """timm's nesting: the MLP a module of its own, the layer scale and the add in the block's."""

    def __init__(self, c=16):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        from timm.layers import LayerNorm2d

        self.norm = LayerNorm2d(c)
        self.mlp = nn.Sequential(nn.Conv2d(c, 4 * c, 1), nn.GELU(), nn.Conv2d(4 * c, c, 1))
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        return x + self.mlp(self.norm(self.conv_dw(x))) * self.gamma


def test_a_module_inside_a_block_names_the_block_that_holds_it():
    import warnings

    graph = merge_branches(fold_constants(_graph(nn.Sequential(NestedConvNeXt()))))
    declined = lambda g, b: (2.0, 1.0)  # noqa: E731 - the cost model declines every block
    for name in ("0.mlp", "0.mlp.0"):  # (its last conv took the layer scale: the block's scope)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a name inside the block names it: no warning
            forced = fuse_blocks(graph, predict=declined, overrides={name: True})
        assert [n.attrs.kind for n in _fused(forced)] == ["convnext_block"], name
    refused = fuse_blocks(graph, predict=lambda g, b: (1.0, 2.0), overrides={"0.mlp": False})
    assert _fused(refused) == []  # neither the whole block nor its MLP alone
