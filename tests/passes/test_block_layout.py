"""block_layout: which values are stored in channel blocks, where it must not block, and that the TVM backend
computes the same values with the blocked layout as without it."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import convopt
from convopt.ir import Op, parse, verify
from convopt.numerics import relative_error
from convopt.target import resolve_target
from convopt.ir import ops as O
from convopt.passes.block_layout import block_layout

from ..graphs import Builder

LANES = 8


def _conv(b, x, cin, cout, k=1, name=None, groups=1, stride=1):
    w = b.const(f"{name}.w", torch.randn(cout, cin // groups, k, k))
    return b.node(Op.CONV2D, [x, w, None], O.Conv2dAttrs((stride, stride), (k // 2, k // 2), (1, 1), groups),
                  name=name)


def _with_lowering(graph, lowering="direct", **per_node):
    """Every conv with ``lowering`` (select_lowering's job), or the one named in per_node."""
    nodes = [replace(n, attrs=replace(n.attrs, lowering=per_node.get(n.name, lowering))) if n.op is Op.CONV2D
             else n for n in graph.nodes]
    return graph.replace(nodes=tuple(nodes))


def _layouts(graph):
    return {n.name: n.type.layout for n in graph.nodes if hasattr(n.type, "layout")}


def _chain():
    """x -> c1 (1x1) -> relu -> c2 (3x3) -> add(., relu) -> c3 -> output, with a max pool and a BN in between."""
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    c1 = _conv(b, x, 16, 32, name="c1")
    r = b.node(Op.RELU, [c1], O.NoAttrs(), name="r")
    c2 = _conv(b, r, 32, 32, k=3, name="c2")
    a = b.node(Op.ADD, [c2, r], O.BinaryAttrs(), name="a")
    p = b.node(Op.MAX_POOL2D, [a], O.MaxPool2dAttrs((2, 2), (2, 2)), name="p")
    stats = [b.const(f"bn.{k}", torch.rand(32) + 0.5) for k in ("w", "b", "m", "v")]
    bn = b.node(Op.BATCH_NORM, [p, *stats], O.NormAttrs(), name="bn")
    c3 = _conv(b, bn, 32, 16, name="c3")
    return b.graph(c3)


def test_values_between_convs_are_blocked_and_the_edges_are_not():
    before = _with_lowering(_chain())
    after = block_layout(before, lanes=LANES)
    layouts = _layouts(after)
    assert all(layouts[n] == "NCHW8c" for n in ("c1", "r", "c2", "a", "p", "bn")), layouts
    assert layouts["c3"] == ""  # the graph's output
    assert all(n.type.layout == "" for n in before.nodes)  # the input graph is not mutated
    assert [(n.op, n.inputs, n.attrs) for n in after.nodes] == [(n.op, n.inputs, n.attrs) for n in before.nodes]
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def test_an_nchw_only_op_keeps_its_operand_and_the_layout_preserving_ops_before_it_nchw():
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    c1 = _conv(b, x, 16, 16, name="c1")
    r = b.node(Op.RELU, [c1], O.NoAttrs(), name="r")
    perm = b.node(Op.PERMUTE, [r], O.PermuteAttrs((0, 2, 3, 1)), name="perm")
    back = b.node(Op.PERMUTE, [perm], O.PermuteAttrs((0, 3, 1, 2)), name="back")
    c2 = _conv(b, back, 16, 16, name="c2")
    c3 = _conv(b, c2, 16, 16, name="c3")
    layouts = _layouts(block_layout(_with_lowering(b.graph(c3)), lanes=LANES))
    assert layouts["c1"] == layouts["r"] == ""  # the permute needs NCHW: the conv stores NCHW itself
    assert layouts["c2"] == "NCHW8c"  # a conv reads either layout: c2 reads NCHW and writes blocked


def test_convs_whose_lowering_vectorizes_over_pixels_read_and_write_nchw():
    g = _with_lowering(_chain(), c2="im2col")
    layouts = _layouts(block_layout(g, lanes=LANES))
    assert layouts["c1"] == layouts["r"] == layouts["c2"] == layouts["a"] == ""  # r feeds c2 and a
    assert layouts["p"] == "" and layouts["bn"] == ""
    g = _with_lowering(_chain(), c2="fft")  # writes NCHW only
    assert _layouts(block_layout(g, lanes=LANES))["c2"] == ""


@pytest.mark.parametrize("channels", [10, 4])  # 10 of 16 stored channels, 4 of 8: under PADDED_FILL
def test_channels_that_fill_too_little_of_their_last_block_stay_nchw(channels):
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    c1 = _conv(b, x, 16, channels, name="c1")
    c2 = _conv(b, c1, channels, 16, name="c2")
    c3 = _conv(b, c2, 16, 16, name="c3")
    layouts = _layouts(block_layout(_with_lowering(b.graph(c3)), lanes=LANES))
    assert layouts == {"c1": "", "c2": "NCHW8c", "c3": ""}


def _padded_stage(between=None, channels=12):
    """x (16) -> c1 (16 -> 12: a padded block of 8) -> [between] -> relu -> dw (3x3 depthwise) -> channel norm
    -> c2 (12 -> 16) -> c3: ``between(b, value) -> value`` puts one op in the padded stage."""
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    v = _conv(b, x, 16, channels, name="c1")
    if between is not None:
        v = between(b, v)
    r = b.node(Op.RELU, [v], O.NoAttrs(), name="r")
    dw = _conv(b, r, channels, channels, k=3, groups=channels, name="dw")
    w, bias = (b.const(f"n.{k}", torch.rand(channels)) for k in ("w", "b"))
    norm = b.node(Op.CHANNEL_NORM, [dw, w, bias], O.NormAttrs(1e-6), name="norm")
    c2 = _conv(b, norm, channels, 16, name="c2")
    return _with_lowering(b.graph(_conv(b, c2, 16, 16, name="c3")), dw="depthwise")


def test_channels_that_fill_most_of_their_last_block_are_stored_padded():
    before = _padded_stage()
    after = block_layout(before, lanes=LANES)
    assert _layouts(after) == {"c1": "NCHW8c", "r": "NCHW8c", "dw": "NCHW8c", "norm": "NCHW8c", "c2": "NCHW8c",
                               "c3": ""}
    assert after.types["c1"].shape == (1, 12, 8, 8)  # the logical shape: the padding is the layout's
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


def _between(op, *, attrs=O.NoAttrs(), operand=None):
    def insert(b, v):
        inputs = [v] if operand is None else [v, operand(b)]
        return b.node(op, inputs, attrs, name="op")
    return insert


@pytest.mark.parametrize("between", [
    _between(Op.SIGMOID),  # sigmoid(0) = 1/2: the pad lanes would not stay zero
    _between(Op.ADD, attrs=O.BinaryAttrs(scalar=1.0)),
    _between(Op.DIV, attrs=O.BinaryAttrs(), operand=lambda b: b.const("d", torch.rand(12, 1, 1) + 1)),  # 0 / 0 in the pad lanes
    _between(Op.ADD, attrs=O.BinaryAttrs(), operand=lambda b: b.const("m", torch.rand(1, 1, 8, 8))),  # one channel
], ids=["sigmoid", "scalar-add", "div", "add-one-channel"])
def test_a_padded_value_is_not_blocked_through_ops_that_break_its_zero_lanes_or_read_its_blocks(between):
    layouts = _layouts(block_layout(_padded_stage(between), lanes=LANES))
    assert layouts["c1"] == "", layouts


def test_a_concatenation_of_padded_values_is_not_blocked():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    parts = [_conv(b, x, 16, 12, name=f"c{i}") for i in range(2)]
    cat = b.node(Op.CAT, parts, O.DimAttrs(1), name="cat")  # 24 channels: whole blocks, but not of its parts'
    layouts = _layouts(block_layout(_with_lowering(b.graph(_conv(b, cat, 24, 16, name="c3"))), lanes=LANES))
    assert layouts == {"c0": "", "c1": "", "cat": "", "c3": ""}


def test_a_grouped_conv_reads_a_padded_value_only_with_groups_that_divide_the_block_writing_it_padded_alike():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    c1 = _conv(b, x, 16, 12, name="c1")
    g2 = _conv(b, c1, 12, 12, k=3, groups=2, name="g2")  # 6 channels a group: padding would shift groups
    g = _with_lowering(b.graph(_conv(b, g2, 12, 16, name="c3")))
    assert _layouts(block_layout(g, lanes=LANES))["c1"] == ""
    # 4 channels a group (RegNet's 8 with 16 lanes): a zero group pads each side to whole blocks
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    g3 = _conv(b, _conv(b, x, 16, 12, name="c1"), 12, 12, k=3, groups=3, name="g3")
    layouts = _layouts(block_layout(_with_lowering(b.graph(_conv(b, g3, 12, 16, name="c3"))), lanes=LANES))
    assert layouts == {"c1": f"NCHW{LANES}c", "g3": f"NCHW{LANES}c", "c3": ""}
    # a depthwise conv whose output can't be blocked (a graph output) keeps its padded input NCHW too
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    dw = _conv(b, _conv(b, x, 16, 12, name="c1"), 12, 12, k=3, groups=12, name="dw")
    layouts = _layouts(block_layout(_with_lowering(b.graph(dw), dw="depthwise"), lanes=LANES))
    assert layouts == {"c1": "", "dw": ""}


def test_broadcast_operands_constant_scales_and_a_squeeze_excite():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    c1 = _conv(b, x, 16, 16, name="c1")
    scale = b.const("scale", torch.rand(16, 1, 1))  # a layer scale: a constant with C channels
    ls = b.node(Op.MUL, [c1, scale], O.BinaryAttrs(), name="ls")
    m = b.node(Op.MEAN, [ls], O.ReduceAttrs((2, 3), True), name="m")
    s1 = _conv(b, m, 16, 4, name="s1")  # 4 channels: NCHW, but a 1x1 map reads blocked for free
    s2 = _conv(b, s1, 4, 16, name="s2")
    gate = b.node(Op.SIGMOID, [s2], O.NoAttrs(), name="gate")
    se = b.node(Op.MUL, [ls, gate], O.BinaryAttrs(), name="se")
    c2 = _conv(b, se, 16, 16, name="c2")
    pooled = b.node(Op.MEAN, [c2], O.ReduceAttrs((-2, -1), False), name="pooled")  # reads blocked, writes [N, C]
    layouts = _layouts(block_layout(_with_lowering(b.graph(pooled)), lanes=LANES))
    assert layouts == {"c1": "NCHW8c", "ls": "NCHW8c", "m": "NCHW8c", "s1": "", "s2": "NCHW8c", "gate": "NCHW8c",
                       "se": "NCHW8c", "c2": "NCHW8c", "pooled": ""}
    # the squeeze-excite convs vectorized over pixels: the gate is NCHW, the tensor it scales stays blocked
    layouts = _layouts(block_layout(_with_lowering(b.graph(pooled), s1="im2col", s2="im2col"), lanes=LANES))
    assert layouts == {"c1": "NCHW8c", "ls": "NCHW8c", "m": "NCHW8c", "s1": "", "s2": "", "gate": "",
                       "se": "NCHW8c", "c2": "NCHW8c", "pooled": ""}


def test_a_non_constant_nchw_operand_keeps_the_op_nchw():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    c1 = _conv(b, x, 16, 16, name="c1")
    a = b.node(Op.ADD, [c1, x], O.BinaryAttrs(), name="a")  # x is a graph input: NCHW
    c2 = _conv(b, a, 16, 16, name="c2")
    c3 = _conv(b, c2, 16, 16, name="c3")
    layouts = _layouts(block_layout(_with_lowering(b.graph(c3)), lanes=LANES))
    assert layouts["c1"] == layouts["a"] == "" and layouts["c2"] == "NCHW8c"


def test_nothing_to_block_returns_the_graph_itself():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    c1 = _conv(b, x, 16, 16, name="c1")
    g = _with_lowering(b.graph(b.node(Op.RELU, [c1], O.NoAttrs())))
    assert block_layout(g, lanes=LANES) is g


class _Block(nn.Module):
    """The ops block_layout lets through, between convs: BN, activations, pools, residual, SE, layer scale."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.se_reduce, self.se_expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.gamma = nn.Parameter(torch.rand(32, 1, 1))
        self.down = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        y = torch.nn.functional.hardswish(self.stem(x))
        y = self.bn(torch.max_pool2d(y, 3, 1, 1))
        z = torch.relu(self.pw(torch.nn.functional.silu(self.dw(y))))
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(z.mean((2, 3), keepdim=True)))))
        y = y + self.gamma * (z * gate)
        y = torch.nn.functional.avg_pool2d(self.down(y), 2)
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.parametrize("se_lowering", ["direct", "im2col"])  # im2col: the gate is computed in NCHW
@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_equal_with_and_without_blocked_layouts(lanes, se_lowering):
    torch.manual_seed(0)
    model = _Block().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 20, 20)
    target = resolve_target("cpu").with_lanes(lanes)
    # lowerings forced: which convs run blocked must not hang on this machine's cost model
    convs = {name: "direct" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    lowering = convs | {"dw": "depthwise", "se_reduce": se_lowering, "se_expand": se_lowering}
    blocked = convopt.optimize(model, x, target=target, lowering=lowering)  # check=True: within 1e-4 of eager
    layouts = {n.name: n.type.layout for n in blocked.graph.nodes if hasattr(n.type, "layout")}
    assert set(layouts.values()) == {"", f"NCHW{lanes}c"}
    scaled = next(n for n in blocked.graph.nodes if n.op is Op.MUL and n.inputs[1] in layouts
                  and blocked.graph.types[n.inputs[1]].shape[2:] == (1, 1))
    assert layouts[scaled.name] == f"NCHW{lanes}c"  # z * gate stays blocked whichever layout the gate has
    assert layouts[scaled.inputs[1]] == ("" if se_lowering == "im2col" else f"NCHW{lanes}c")
    plain = convopt.optimize(model, x, target=target, lowering=lowering, skip_passes=["block_layout"])
    assert all(not getattr(n.type, "layout", "") for n in plain.graph.nodes)
    x2 = torch.randn_like(x)
    with torch.no_grad():
        expected = model(x2)
    assert relative_error(blocked(x2), expected) <= 1e-5
    assert relative_error(blocked(x2), plain(x2)) <= 1e-5


class _ChannelNormBlock(nn.Module):
    """ConvNeXt's pattern: depthwise conv -> layer norm over channels (timm's LayerNorm2d) -> 1x1 convs."""

    def __init__(self, channels=32):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.fc1, self.fc2 = nn.Conv2d(channels, 4 * channels, 1), nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(y)))


def test_a_channel_norm_between_blocked_convs_is_blocked():
    b = Builder()
    x = b.input("x", (1, 16, 8, 8))
    c1 = _conv(b, x, 16, 16, name="c1")
    w, bias = (b.const(f"n.{k}", torch.rand(16)) for k in ("w", "b"))
    norm = b.node(Op.CHANNEL_NORM, [c1, w, bias], O.NormAttrs(1e-6), name="norm")
    c2 = _conv(b, norm, 16, 16, name="c2")
    c3 = _conv(b, c2, 16, 16, name="c3")
    assert _layouts(block_layout(_with_lowering(b.graph(c3)), lanes=LANES)) == {
        "c1": "NCHW8c", "norm": "NCHW8c", "c2": "NCHW8c", "c3": ""}


@pytest.mark.parametrize("lanes", [8, 16])
def test_channel_norm_computes_the_same_in_blocks(lanes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), _ChannelNormBlock(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(2, 3, 11, 9)
    target = resolve_target("cpu").with_lanes(lanes)
    lowering = {"0": "direct", "1.dw": "depthwise", "1.fc1": "direct", "1.fc2": "direct", "2": "direct"}
    blocked = convopt.optimize(model, x, target=target, lowering=lowering)  # check=True: within 1e-4 of eager
    norm = next(n for n in blocked.graph.nodes if n.op is Op.CHANNEL_NORM)
    assert norm.type.layout == f"NCHW{lanes}c"
    plain = convopt.optimize(model, x, target=target, lowering=lowering, skip_passes=["block_layout"])
    x2 = torch.randn_like(x)
    assert relative_error(blocked(x2), plain(x2)) <= 1e-5


class _PaddedStage(nn.Module):
    """A stage of C channels that fill 2.5 blocks (ConvNeXt-atto's 40 with AVX-512): stem, pool, BN, a
    squeeze-excite, ConvNeXt block (depthwise, channel norm, GELU MLP, residual), a layer scale, a strided conv,
    a mean to [N, C]."""

    def __init__(self, channels):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.block = _ChannelNormBlock(channels)
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1))
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.se = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        y = self.bn(torch.max_pool2d(torch.relu(self.stem(x)), 3, 1, 1))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))  # a gate of one pixel over padded blocks
        y = self.down(y + self.gamma * self.block(y))
        return torch.nn.functional.hardswish(y).mean((2, 3))


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_padded_channel_blocks_equal_eager(lanes):
    torch.manual_seed(0)
    channels = 2 * lanes + lanes // 2
    model = _PaddedStage(channels).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 13, 11)
    target = resolve_target("cpu").with_lanes(lanes)
    lowering = {"stem": "direct", "block.dw": "depthwise", "block.fc1": "direct", "block.fc2": "direct",
                "down": "direct", "se": "direct"}
    blocked = convopt.optimize(model, x, target=target, lowering=lowering)  # check=True: within 1e-4 of eager
    gated = next(n for n in blocked.graph.nodes if n.op is Op.MUL and blocked.graph.types[n.inputs[1]].shape[2:] == (1, 1))
    assert gated.type.layout and blocked.graph.types[gated.inputs[1]].layout == ""  # the gate: NCHW, padded on use
    padded = {n.op for n in blocked.graph.nodes if getattr(n.type, "layout", "") and n.type.shape[1] == channels}
    assert {Op.CONV2D, Op.MAX_POOL2D, Op.BATCH_NORM, Op.CHANNEL_NORM, Op.ADD, Op.MUL} <= padded, padded
    plain = convopt.optimize(model, x, target=target, lowering=lowering, skip_passes=["block_layout"])
    x2 = torch.randn_like(x)
    with torch.no_grad():
        expected = model(x2)
    assert relative_error(blocked(x2), expected) <= 1e-5
    assert relative_error(blocked(x2), plain(x2)) <= 1e-5


def _padded_chain(pad, mode="constant"):
    """c1 -> relu -> pad (ATen, as TF "SAME" padding captures) -> depthwise 3x3 stride 2 -> c3."""
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    r = b.node(Op.RELU, [_conv(b, x, 16, 32, name="c1")], O.NoAttrs(), name="r")
    p = b.node(Op.TORCH, [r], O.TorchAttrs("aten.pad.default", (O.Ref(0), pad, mode, 0.0)), name="p")
    w = b.const("dw.w", torch.randn(32, 1, 3, 3))
    dw = b.node(Op.CONV2D, [p, w, None], O.Conv2dAttrs((2, 2), (0, 0), (1, 1), 32), name="dw")
    return b.graph(_conv(b, dw, 32, 16, name="c3"))


def test_a_constant_pad_of_h_and_w_keeps_its_operand_blocked():
    after = block_layout(_with_lowering(_padded_chain((0, 1, 0, 1)), dw="depthwise"), lanes=LANES)
    layouts = _layouts(after)
    assert all(layouts[n] == "NCHW8c" for n in ("c1", "r", "p", "dw")), layouts
    verify(after)


@pytest.mark.parametrize("pad, mode", [((0, 1, 0, 1), "reflect"),  # not a constant
                                       ((0, 1, 0, 1, 0, 0), "constant"),  # names the channels too
                                       ((0, 1, -1, 1), "constant")])  # crops
def test_other_pads_stay_nchw(pad, mode):
    after = block_layout(_with_lowering(_padded_chain(pad, mode), dw="depthwise"), lanes=LANES)
    layouts = _layouts(after)
    assert layouts["p"] == "" and layouts["r"] == "", layouts


class _SamePadded(nn.Module):
    """TF "SAME" padding as timm's tf_* models write it: an explicit asymmetric pad before a strided conv."""

    def __init__(self):
        super().__init__()
        self.expand, self.dw, self.project = nn.Conv2d(3, 32, 1), nn.Conv2d(32, 32, 3, 2, groups=32), nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = torch.nn.functional.pad(torch.relu(self.expand(x)), (0, 1, 0, 1))
        y = torch.nn.functional.pad(torch.relu(self.dw(y)), (1, 1, 2, 0), value=0.5)
        return self.project(y)


def _blocked_through_tvm(model, x, lanes, lowering="direct"):
    """``model`` optimized for ``lanes`` (forced lowerings: which convs run blocked must not hang on this
    machine's cost model), checked against eager; its graph."""
    fast = convopt.optimize(model, x, target=resolve_target("cpu").with_lanes(lanes), lowering=lowering,
                            fuse_blocks=False)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-5
    return fast.graph


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_blocked_pads_equal_eager(lanes):
    graph = _blocked_through_tvm(_SamePadded().eval(), torch.randn(2, 3, 21, 21), lanes,
                                 {"expand": "direct", "dw": "depthwise", "project": "direct"})
    pads = [n for n in graph.nodes if n.op is Op.TORCH]
    assert len(pads) == 2 and all(n.type.layout == f"NCHW{lanes}c" for n in pads)


def _concatenated(parts=(16, 16), dim=1):
    """Two convs concatenated (DenseNet, VoVNet) -> a conv."""
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    convs = [_conv(b, x, 16, c, name=f"c{i}") for i, c in enumerate(parts)]
    cat = b.node(Op.CAT, convs, O.DimAttrs(dim), name="cat")
    channels = sum(parts) if dim % 4 == 1 else parts[0]
    return b.graph(_conv(b, cat, channels, 8, name="out"))


@pytest.mark.parametrize("dim", [1, -3])
def test_a_concatenation_of_blocked_channels_is_blocked(dim):
    after = block_layout(_with_lowering(_concatenated(dim=dim)), lanes=LANES)
    layouts = _layouts(after)
    assert all(layouts[n] == "NCHW8c" for n in ("c0", "c1", "cat")), layouts
    verify(after)


@pytest.mark.parametrize("parts, dim", [((16, 12), 1),  # a part that is no whole number of blocks
                                        ((16, 16), 3)])  # along the width
def test_other_concatenations_stay_nchw(parts, dim):
    after = block_layout(_with_lowering(_concatenated(parts, dim)), lanes=LANES)
    layouts = _layouts(after)
    assert layouts["cat"] == "" and layouts["c0"] == "", layouts


class _Dense(nn.Module):
    """DenseNet's pattern: each layer's output concatenated to its input along the channels."""

    def __init__(self, growth=16):
        super().__init__()
        self.stem = nn.Conv2d(3, 2 * growth, 3, padding=1)
        self.layers = nn.ModuleList(nn.Conv2d((2 + i) * growth, growth, 3, padding=1) for i in range(3))

    def forward(self, x):
        y = torch.relu(self.stem(x))
        for layer in self.layers:
            y = torch.cat([y, torch.relu(layer(y))], dim=-3)
        return y.mean((2, 3))


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_blocked_concatenations_equal_eager(lanes):
    graph = _blocked_through_tvm(_Dense().eval(), torch.randn(2, 3, 15, 15), lanes)
    cats = [n for n in graph.nodes if n.op is Op.CAT]
    assert len(cats) == 3 and all(n.type.layout == f"NCHW{lanes}c" for n in cats)


class _LeakyChain(nn.Module):
    """CSPNet's pattern: convs with leaky ReLU, an ATen op convopt keeps as it is (Op.TORCH)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = torch.nn.functional.leaky_relu(self.a(x), 0.1)
        y = torch.nn.functional.elu(self.b(y)) + y
        return self.c(torch.nn.functional.softplus(y, beta=2.0))


@pytest.mark.parametrize("lanes", [8, 16])
def test_elementwise_aten_ops_between_convs_are_blocked(lanes):
    graph = _blocked_through_tvm(_LeakyChain().eval(), torch.randn(2, 3, 13, 13), lanes)
    aten = [n for n in graph.nodes if n.op is Op.TORCH]
    assert {n.attrs.target for n in aten} >= {"aten.leaky_relu.default", "aten.elu.default", "aten.softplus.default"}
    assert all(n.type.layout == f"NCHW{lanes}c" for n in aten)


def _split_chain(sizes=(16, 16), reader=None):
    """c1 (32 channels) -> split on the channels -> a conv on each part -> cat -> out; ``reader`` ("permute")
    also reads the first part with an op that needs NCHW."""
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    c1 = _conv(b, x, 16, sum(sizes), name="c1")
    split = b.node(Op.SPLIT, [c1], O.SplitAttrs(tuple(sizes), 1), name="split")
    parts = [b.node(Op.GETITEM, [split], O.IndexAttrs(i), name=f"part{i}") for i in range(len(sizes))]
    convs = [_conv(b, p, c, 16, k=3, name=f"b{i}") for i, (p, c) in enumerate(zip(parts, sizes))]
    out = _conv(b, b.node(Op.CAT, convs, O.DimAttrs(1), name="cat"), 16 * len(sizes), 8, name="out")
    if reader == "permute":
        return b.graph(out, b.node(Op.PERMUTE, [parts[0]], O.PermuteAttrs((0, 2, 3, 1)), name="perm"))
    return b.graph(out)


def test_a_split_of_whole_channel_blocks_and_its_parts_are_blocked():
    after = block_layout(_with_lowering(_split_chain((16, 8, 8))), lanes=LANES)
    layouts = _layouts(after)
    assert all(layouts[n] == "NCHW8c" for n in ("c1", "part0", "part1", "part2", "b0", "cat")), layouts
    split = after.node_map["split"]
    assert all(e.layout == "NCHW8c" for e in split.type.elements)
    verify(after)
    assert parse(str(after), constants={c.name: c.data for c in after.constants}) == after


@pytest.mark.parametrize("sizes, reader", [((16, 12, 4), None),  # parts that are no whole number of blocks
                                           ((16, 16), "permute")])  # one part read by an NCHW-only op
def test_other_splits_stay_nchw_with_all_their_parts(sizes, reader):
    after = block_layout(_with_lowering(_split_chain(sizes, reader)), lanes=LANES)
    layouts = _layouts(after)
    assert layouts["c1"] == "" and all(layouts[f"part{i}"] == "" for i in range(len(sizes))), layouts
    assert all(e.layout == "" for e in after.node_map["split"].type.elements)
    assert layouts["b0"] == "NCHW8c"  # the convs after the parts still write blocked for the cat


def _sliced(dim, start, end, step=1):
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    c1 = _conv(b, x, 16, 32, name="c1")
    s = b.node(Op.TORCH, [c1], O.TorchAttrs("aten.slice.Tensor", (O.Ref(0), dim, start, end, step)), name="s")
    channels = len(range(32)[start:end:step]) if dim % 4 == 1 else 32
    return b.graph(_conv(b, s, channels, 8, name="out"))


@pytest.mark.parametrize("dim, start, end, step", [(1, 8, 24, 1), (1, 16, 2**63 - 1, 1), (-3, 0, 8, 1),
                                                   (2, 1, -1, 2), (-1, 0, 6, 1)])
def test_a_slice_of_whole_channel_blocks_or_of_h_or_w_is_blocked(dim, start, end, step):
    layouts = _layouts(block_layout(_with_lowering(_sliced(dim, start, end, step)), lanes=LANES))
    assert layouts["c1"] == layouts["s"] == "NCHW8c", layouts


@pytest.mark.parametrize("dim, start, end, step", [(1, 4, 20, 1),  # starts inside a block
                                                   (1, 0, 16, 2),  # every other channel
                                                   (1, 0, 12, 1)])  # ends inside a block
def test_other_channel_slices_stay_nchw(dim, start, end, step):
    layouts = _layouts(block_layout(_with_lowering(_sliced(dim, start, end, step)), lanes=LANES))
    assert layouts["c1"] == layouts["s"] == "", layouts


class _SplitAndSlice(nn.Module):
    """CSPNet's and MixNet's channel splits, DPN's channel slices and a strided slice of the rows."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 64, 1), nn.Conv2d(32, 32, 3, padding=1)
        self.c, self.d = nn.Conv2d(64, 16, 1), nn.Conv2d(32, 16, 3, padding=1)

    def forward(self, x):
        y = self.a(x).relu()
        p, q = y.split([32, 32], dim=1)
        rows = y[:, :, 1:-1:2]
        return self.c(torch.cat([self.b(p), q], 1)) + self.d(y[:, 16:48]), self.d(rows[:, 32:])


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_blocked_splits_and_slices_equal_eager(lanes):
    model, x = _SplitAndSlice().eval(), torch.randn(2, 3, 13, 13)
    fast = convopt.optimize(model, x, target=resolve_target("cpu").with_lanes(lanes), lowering="direct",
                            fuse_blocks=False)
    with torch.no_grad():
        assert all(relative_error(a, b) <= 1e-5 for a, b in zip(fast(x), model(x)))
    blocked = f"NCHW{lanes}c"
    assert all(e.layout == blocked for n in fast.graph.nodes if n.op is Op.SPLIT for e in n.type.elements)
    slices = [n for n in fast.graph.nodes if n.op is Op.TORCH]
    assert len(slices) == 3 and all(n.type.layout == blocked for n in slices)


def _group_normed(groups, channels=32, constant_affine=True):
    b = Builder()
    x = b.input("x", (1, 16, 12, 12))
    c1 = _conv(b, x, 16, channels, name="c1")
    if constant_affine:
        affine = [b.const("gn.w", torch.rand(channels) + 0.5), b.const("gn.b", torch.randn(channels))]
    else:  # the weight computed in the graph
        affine = [b.node(Op.RELU, [b.const("gn.w", torch.randn(channels))], O.NoAttrs(), name="w"), None]
    gn = b.node(Op.GROUP_NORM, [c1, *affine], O.GroupNormAttrs(groups), name="gn")
    return b.graph(_conv(b, gn, channels, 8, name="out"))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_a_group_norm_of_whole_channel_blocks_is_blocked(groups):
    layouts = _layouts(block_layout(_with_lowering(_group_normed(groups)), lanes=LANES))
    assert layouts["c1"] == layouts["gn"] == "NCHW8c", layouts


@pytest.mark.parametrize("groups, constant_affine", [(8, True),  # groups of 4 channels: half a block
                                                     (1, False)])  # a weight not constant
def test_other_group_norms_stay_nchw(groups, constant_affine):
    layouts = _layouts(block_layout(_with_lowering(_group_normed(groups, constant_affine=constant_affine)),
                                    lanes=LANES))
    assert layouts["c1"] == layouts["gn"] == "", layouts


class _NormedAndResized(nn.Module):
    """PoolFormer's GroupNorm(1, C) and GroupNorm with several groups; HRNet's fuse layer (a low-resolution
    branch upsampled, nearest, and added to a high-resolution one); bilinear resizes."""

    def __init__(self):
        super().__init__()
        self.lo, self.hi = nn.Conv2d(3, 32, 3, padding=1, stride=2), nn.Conv2d(3, 32, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(1, 32), nn.GroupNorm(2, 32)
        self.out = nn.Conv2d(32, 16, 1)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.weight.uniform_(-2, 2)
                norm.bias.uniform_(-1, 1)

    def forward(self, x):
        lo, hi = self.lo(x), self.hi(x)
        up = torch.nn.functional.interpolate(lo, size=hi.shape[2:], mode="nearest")
        smooth = torch.nn.functional.interpolate(lo, size=hi.shape[2:], mode="bilinear", align_corners=False)
        return self.out(self.norm1(up + hi) + self.norm2(smooth))


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_blocked_group_norms_and_resizes_equal_eager(lanes):
    graph = _blocked_through_tvm(_NormedAndResized().eval(), torch.randn(2, 3, 14, 15), lanes)
    blocked = [n for n in graph.nodes if n.op in (Op.GROUP_NORM, Op.TORCH)]
    assert len(blocked) == 4 and all(n.type.layout == f"NCHW{lanes}c" for n in blocked)


class _ResponseNormed(nn.Module):
    """ConvNeXt V2's GlobalResponseNorm between two convs: a vector norm over H and W (keepdim), its mean over
    the channels, and addcmul with a per-channel weight and bias."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(3, 32, 1), nn.Conv2d(32, 16, 1)
        self.gamma, self.beta = nn.Parameter(torch.randn(1, 32, 1, 1)), nn.Parameter(torch.randn(1, 32, 1, 1))

    def forward(self, x):
        y = torch.nn.functional.gelu(self.fc1(x))
        gx = torch.norm(y, p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.fc2(y + torch.addcmul(self.beta, self.gamma, y * nx))


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_a_blocked_response_norm_equal_eager(lanes):
    graph = _blocked_through_tvm(_ResponseNormed().eval(), torch.randn(2, 3, 9, 11), lanes)
    norm = next(n for n in graph.nodes if n.op is Op.TORCH)
    assert norm.attrs.target == "aten.linalg_vector_norm.default" and norm.type.layout == f"NCHW{lanes}c"
    gelu = next(n for n in graph.nodes if n.op is Op.GELU)
    assert gelu.type.layout == f"NCHW{lanes}c"  # addcmul became mul and add: nothing between the convs needs NCHW


class _GroupedStage(nn.Module):
    """RegNet's bottleneck over C channels that fill 2.5 blocks: 1x1, grouped 3x3 (groups of half a block,
    stride 1 and 2), 1x1, a residual."""

    def __init__(self, channels, group_width):
        super().__init__()
        self.a = nn.Conv2d(8, channels, 1)
        self.b = nn.Conv2d(channels, channels, 3, padding=1, groups=channels // group_width)
        self.c = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels // group_width)
        self.d = nn.Conv2d(channels, 8, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.relu(self.c(y + torch.relu(self.b(y))))
        return self.d(y)


@pytest.mark.parametrize("lanes", [8, 16])
def test_tvm_results_with_grouped_convs_in_padded_blocks_equal_eager(lanes):
    torch.manual_seed(0)
    channels = 2 * lanes + lanes // 2
    model = _GroupedStage(channels, lanes // 2).eval()
    x = torch.randn(1, 8, 12, 10)
    target = resolve_target("cpu").with_lanes(lanes)
    compiled = convopt.optimize(model, x, target=target, lowering="direct")  # check=True: within 1e-4 of eager
    grouped = [n for n in compiled.graph.nodes if n.op is Op.CONV2D and n.attrs.groups > 1]
    assert len(grouped) == 2 and all(n.type.layout == f"NCHW{lanes}c" for n in grouped)
    x2 = torch.randn_like(x)
    with torch.no_grad():
        expected = model(x2)
    assert relative_error(compiled(x2), expected) <= 1e-5
