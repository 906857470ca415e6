"""fold_channel_scale: a per-channel scale of a conv's input (a squeeze-excite gate) moves into its weight.

For x of shape [1, C, H, W], s of shape [1, C, 1, 1] computed at run time (a sigmoid gate) and a conv of one
group with constant weight W [O, C, KH, KW]:

    conv(x * s, W, b)  =>  conv(x, W * s, b)        (W * s)[o, c, i, j] = W[o, c, i, j] s[0, c, 0, 0]

exact up to rounding (each product x[c, p] s[c] W[o, c, i, j] is reassociated; the zero padding scales to zero).
The multiply touches C H W values of x, the scaled weight O C KH KW, and the backend scales the packed weight
(Lowering.weight_channel_axis) instead of the activation. The scaling is a kernel of its own reading a weight
from the cache or memory, so it fires only where the weight has at most 1/WEIGHT_SHARE of x's values
(O KH KW <= H W / 8): EfficientNet-B0's 672 -> 112 projection at 14 px (a weight of 75 k values against 132 k)
took 9 us to scale, its multiply 3.5. So B0 folds its projections at 112, 56 and 28 px (the gate's multiply of
96 x 56 x 56 values becomes one of 96 x 24), and the later ones stay.

Preconditions, checked per match: the batch is 1 (a gate per sample would need a weight per sample); the
multiply is read by this conv alone; the conv has one group, a constant weight, and a lowering whose packed
weight has an input-channel axis (select_lowering ran: the rewrite asks it); the other operand of the
multiply is exactly [1, C, 1, 1] and not a constant. The result's weight is the ``mul`` that
``conv_spec.scaled_weight`` recognizes; the TVM backend computes it in the packed layout, the torch backend as
written.

Runs last in the CPU inference pipeline, after select_lowering and block_layout: the layouts of x and of the
conv's input are the same (the multiply preserved it), and block_layout never sees a weight-shaped multiply. A
plain traversal, not the rewrite driver: the conv keeps its name, which the fused blocks after it (fuse_blocks
ran before) read in their bodies.
"""

from __future__ import annotations

import dataclasses

from ..ir.graph import Graph, GraphEditor, Node, Origin
from ..ir.ops import Op
from ..schedules.lowerings import lowering

PASS = "fold_channel_scale"
WEIGHT_SHARE = 8  # fold when the weight has at most 1/8 the values of x (module docstring)


def _gated_input(graph: Graph, mul: Node) -> tuple[str, str] | None:
    """(x, s) of a multiply x * s with s one pixel of x's channels, computed at run time (a constant scale is
    merge_branches' to fold, once), and x of batch 1 and more than one pixel."""
    if mul.attrs.scalar is not None or len(mul.inputs) != 2:
        return None
    for x, s in (mul.inputs, mul.inputs[::-1]):
        if s in graph.constant_map:
            continue
        x_shape, s_shape = graph.types[x].shape, graph.types[s].shape
        if len(x_shape) == 4 and x_shape[0] == 1 and tuple(s_shape) == (1, x_shape[1], 1, 1) and x_shape[2:] != (1, 1):
            return x, s
    return None


def _folds(graph: Graph, conv: Node) -> tuple[Node, str, str] | None:
    """(the multiply, x, s) when ``conv`` reads x * s and the scale moves into its weight (module docstring)."""
    if conv.op is not Op.CONV2D or lowering(conv.attrs.lowering or "direct").weight_channel_axis is None:
        return None
    return _folds_by_shape(graph, conv)


def _folds_by_shape(graph: Graph, conv: Node) -> tuple[Node, str, str] | None:
    """``_folds`` but for the conv's lowering (not chosen yet where fuse_blocks asks)."""
    if conv.op is not Op.CONV2D or conv.type.dtype != "f32" or conv.attrs.groups != 1:
        return None
    mul = graph.node_map.get(conv.inputs[0])
    weight = graph.constant_map.get(conv.inputs[1])
    if mul is None or mul.op is not Op.MUL or graph.num_uses(mul.name) != 1 or weight is None:
        return None
    gated = _gated_input(graph, mul)
    if gated is None:
        return None
    x, scale = gated
    out_channels, _, kh, kw = weight.data.shape
    height, width = graph.types[x].shape[2:]
    if WEIGHT_SHARE * out_channels * kh * kw > height * width:  # the multiply of x is the cheaper pass
        return None
    return mul, x, scale


def scale_folds_into_reader(graph: Graph, mul: Node) -> bool:
    """Whether multiply ``mul`` (x * s) is one this pass would fold into the conv that reads it, given a lowering
    with an input-channel axis (fuse_blocks leaves such a squeeze-excite's multiply out of its block)."""
    readers = graph.users.get(mul.name, ())
    return len(readers) == 1 and mul.name not in set(graph.outputs) and _folds_by_shape(graph, readers[0]) is not None


def fold_channel_scale(graph: Graph) -> Graph:
    folds = {n.name: found for n in graph.nodes if (found := _folds(graph, n)) is not None}
    if not folds:
        return graph
    multiplies = {mul.name for mul, _, _ in folds.values()}
    editor = GraphEditor(graph, PASS)
    for n in graph.nodes:
        if n.name in multiplies:
            continue  # read by its conv alone, which now reads x
        if n.name in folds:
            mul, x, scale = folds[n.name]
            weight = editor.emit(Op.MUL, (n.inputs[1], scale), mul.attrs, graph.types[n.inputs[1]],
                                 base=f"{n.name}_scaled_weight", sources=(mul, n))
            n = dataclasses.replace(n, inputs=(x, weight, *n.inputs[2:]), origin=Origin(PASS, (n.name, mul.name)))
        editor.keep(n)
    return editor.finish()
