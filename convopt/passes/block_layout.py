"""block_layout: keep the activations between convs in channel blocks, NCHW[b]c with b = the SIMD lanes.

For a value v (4-D, fp32) the rewrite is only a change of storage:

    type(v) = f32[N,C,H,W]   =>   f32[N,C,H,W]{NCHWbc}        stored as [N, ceil(C/b), H, W, b] (ir/layout.py)

When C % b != 0 the last block is padded with zero lanes ("padded blocks": 40 channels are 3 blocks of 16
with AVX-512; without them every tensor of such a stage stayed NCHW on AVX-512 while AVX2 blocked it). A
padded value needs more than whole blocks do, because its pad lanes must stay zero and nobody may read it as
C channels packed: at least three quarters of its stored channels are real (``PADDED_FILL``) and it has more
than one pixel; its producer is a conv of one group, or of groups as wide on both sides whose width divides
the block (depthwise, RegNet's 8-channel groups) whose input is padded alike (the kernel computes the conv
over whole blocks with zero weights and bias, added as whole groups: schedules/conv_spec.pad_to_blocks),
or a layout-preserving op that maps zeros to zeros (``keeps_zero_lanes``: not sigmoid, a division, a scalar
add, a pad with a non-zero value; no cat, split or slice of channels, no group norm; a one-pixel operand
broadcast over it, a squeeze-excite gate, is padded with zeros by the backend); its readers are such convs
and ops, or a mean or adaptive pool over H and W (which writes its [N, C] or [N, C, 1, 1] in NCHW). Of the fused blocks,
the inverted residual's kernel (``PADDED_FUSED_KINDS``) reads and writes padded blocks; its output is
padded only with its input, which its residual adds.

and v is stored blocked when both hold:
  - its producer can write it blocked: a conv that convopt compiles with a lowering that runs at full
    speed on blocked tensors (``Lowering.blocked_io``: it vectorizes over channels), a fused block
    (passes/fuse_blocks.py: its kernel stores rows of channel vectors either way), or a layout-preserving
    op (LAYOUT_PRESERVING and the elementwise ATen ops kept as they are, ir.ops.ELEMENTWISE_ATEN:
    elementwise ops, batch_norm, channel_norm, pooling, a mean over H and W with
    keepdim, a constant pad of H and W, a concatenation along the channels, a split of the channels into
    whole blocks and its parts, a slice of whole channel blocks or of H or W, a group norm of whole blocks,
    a resize of H and W, a vector norm over H and W) whose
    non-constant operands with C channels and more than one pixel are all blocked (constant operands are
    re-blocked once by the backend; operands with one channel broadcast in either layout, and so do those
    of one pixel, such as a squeeze-excite gate: [N, C, 1, 1] and [N, C/b, 1, 1, b] are the same bytes);
  - each of its readers takes it blocked: such a conv (any lowering reads a blocked input correctly, but
    one vectorized over pixels would gather it, so those read NCHW), a fused block, a layout-preserving op whose own
    output is blocked, a mean over H and W (writes [N, C]), or anything at all when H = W = 1 (both
    layouts store such a tensor alike, so the backend reinterprets it for free). A graph output is never
    blocked.
It is the greatest fixpoint of those two rules: start from every value whose producer could write it
blocked, drop those with a reader that can't take them, and the values of layout-preserving ops whose
operands were dropped, until nothing changes. So no layout-transform node is ever needed: a conv reads
an NCHW input and writes an NCHW output (for the ops that need it) inside its own kernel, as before; the
transforms happen only at the graph's edges and next to NCHW-only ops, fused into the neighbouring convs.

Preconditions: runs last in the CPU inference pipeline, after select_lowering (it asks each conv's
lowering whether it runs on blocked tensors). The graph's semantics don't change: the torch backend and
verify() read logical shapes; the TVM backend stores the blocked values as [N, C/b, H, W, b].
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..cost.model import works_blocked
from ..ir.graph import Graph, Node
from ..ir.layout import aligned_4d, blocked_layout, padded_channels
from ..ir.ops import BINARY_ELEMENTWISE, ELEMENTWISE_ATEN, PAD_TARGETS, UNARY_ELEMENTWISE, Op, pad_arguments
from ..ir.types import TensorType, TupleType
from ..schedules import fused_block, squeeze_excite
from ..schedules import conv_spec
from ..schedules.conv_spec import conv_spec_of

# ops that compute each element of a 4-D output from the same (n, c, y, x) of their inputs' channels, or
# pool within one channel: they run on blocked tensors as they are
LAYOUT_PRESERVING = frozenset({
    *UNARY_ELEMENTWISE, *BINARY_ELEMENTWISE, Op.IDENTITY, Op.BATCH_NORM,
    Op.MAX_POOL2D, Op.AVG_POOL2D, Op.ADAPTIVE_AVG_POOL2D,
    Op.CHANNEL_NORM,  # not elementwise, but its kernel (schedules/layer_norm.py) runs on channel blocks
})


def is_spatial_mean(graph: Graph, n: Node) -> bool:
    """A mean of a 4-D tensor over exactly its H and W dims."""
    if n.op is not Op.MEAN:
        return False
    rank = graph.types[n.inputs[0]].rank
    return rank == 4 and {d % rank for d in n.attrs.dims} == {2, 3}


def is_spatial_pad(n: Node) -> bool:
    """A constant pad of H and W only, no crop (TF "SAME" padding before a strided conv: (0, 1, 0, 1)): it pads
    the same two axes of a blocked tensor, [N, C/b, H, W, b]."""
    if n.op is not Op.TORCH or n.attrs.target not in PAD_TARGETS:
        return False
    pad, mode, _ = pad_arguments(n.attrs)
    return mode == "constant" and len(pad) <= 4 and min(pad, default=0) >= 0


def is_channel_cat(n: Node) -> bool:
    """A concatenation of 4-D tensors along the channels: of blocked inputs whose channels fill whole blocks
    it is the concatenation of their blocks, [N, (C1 + C2)/b, H, W, b] (DenseNet, VoVNet, DLA, Inception)."""
    return n.op is Op.CAT and isinstance(n.type, TensorType) and n.type.rank == 4 and n.attrs.dim % 4 == 1


def is_channel_split(graph: Graph, n: Node) -> bool:
    """A split of a 4-D tensor along the channels (CSPNet, MixNet): of a blocked input whose parts all fill
    whole blocks (``_blockable`` of its tuple type) it splits the blocks, [N, C1/b, H, W, b], ..."""
    return (n.op is Op.SPLIT and isinstance(n.type, TupleType) and graph.types[n.inputs[0]].rank == 4
            and n.attrs.dim % 4 == 1)


def is_part_of_channel_split(graph: Graph, n: Node) -> bool:
    """A getitem of a channel split: blocked exactly when the split is (block_layout keeps them together)."""
    if n.op is not Op.GETITEM:
        return False
    source = graph.node_map.get(n.inputs[0])
    return source is not None and is_channel_split(graph, source)


SLICE_TARGETS = frozenset({"aten.slice.Tensor"})
# resizes of H and W, which Relax's resize2d runs in the layout NCHW<b>c as well (HRNet's fuse layers)
RESIZE_TARGETS = frozenset({"aten.upsample_nearest2d.vec", "aten.upsample_nearest2d.default",
                            "aten.upsample_bilinear2d.vec", "aten.upsample_bilinear2d.default"})


def is_blocked_slice(graph: Graph, n: Node, block: int) -> bool:
    """A slice of a 4-D tensor along H or W (any step), or along the channels with step 1 from a whole block
    (DPN's ``x[:, :c]``): it slices the same axis of [N, C/b, H, W, b], the channels in whole blocks (the
    output's channel count, a multiple of b, is checked with its type)."""
    if n.op is not Op.TORCH or n.attrs.target not in SLICE_TARGETS or graph.types[n.inputs[0]].rank != 4:
        return False
    args = n.attrs.args
    dim, start, step = (args[i] if len(args) > i else default for i, default in ((1, 0), (2, 0), (4, 1)))
    dim, start, step = int(dim) % 4, int(start or 0), int(step)
    if dim in (2, 3):
        return True
    return dim == 1 and step == 1 and 0 <= start and start % block == 0


def is_blocked_group_norm(graph: Graph, n: Node, block: int) -> bool:
    """A group norm of a 4-D tensor whose groups are whole channel blocks and whose weight and bias are
    constants (PoolFormer's and MobileViTv2's GroupNorm(1, C)): its statistics are over whole blocks of
    [N, C/b, H, W, b] and its affine per channel is re-blocked once."""
    channels = n.type.shape[1] if n.type.rank == 4 else 0
    groups = n.attrs.num_groups
    return (channels > 0 and channels % groups == 0 and (channels // groups) % block == 0
            and all(i is None or i in graph.constant_map for i in n.inputs[1:]))


def is_spatial_norm(graph: Graph, n: Node) -> bool:
    """A vector norm of a 4-D tensor over H and W with keepdim (ConvNeXt V2's GRN): per channel, like a pool."""
    if n.op is not Op.TORCH or n.attrs.target != "aten.linalg_vector_norm.default" or graph.types[n.inputs[0]].rank != 4:
        return False
    args = n.attrs.args
    dims, keepdim = (args[2] if len(args) > 2 else None), (args[3] if len(args) > 3 else False)
    dtype = args[4] if len(args) > 4 else None
    return dims is not None and {int(d) % 4 for d in dims} == {2, 3} and bool(keepdim) and dtype is None


def preserves_layout(graph: Graph, n: Node, block: int) -> bool:
    if n.op is Op.TORCH:
        return (is_spatial_pad(n) or is_blocked_slice(graph, n, block) or is_spatial_norm(graph, n)
                or (n.attrs.target in ELEMENTWISE_ATEN | RESIZE_TARGETS and len(n.inputs) == 1))
    if n.op is Op.CAT:
        return is_channel_cat(n)
    if n.op is Op.SPLIT:
        return is_channel_split(graph, n)
    if n.op is Op.GETITEM:
        return is_part_of_channel_split(graph, n)
    if n.op is Op.GROUP_NORM:
        return is_blocked_group_norm(graph, n, block)
    if n.op is Op.MEAN:
        return is_spatial_mean(graph, n) and n.attrs.keepdim
    if n.op is Op.AVG_POOL2D and n.attrs.divisor_override is not None:
        return False
    return n.op in LAYOUT_PRESERVING


def channel_operands(graph: Graph, n: Node, block: int | None = None) -> list[str] | None:
    """The inputs of a layout-preserving node that must share its output's layout (non-constant, C channels),
    or None when one of its operands can't be broadcast against a blocked tensor (in blocks of ``block``: a
    part of a concatenation in padded blocks)."""
    if n.op in (Op.SPLIT, Op.GETITEM) or n.op is Op.TORCH and n.attrs.target in SLICE_TARGETS:
        return [n.inputs[0]]  # the tensor split or sliced, or the split a part is taken from
    channels = n.type.shape[1]
    if n.op is Op.CAT:  # every part, each in whole blocks (only blockable values become candidates)
        whole = block is None or not any(is_padded(graph.types[i], block) for i in n.inputs)
        return None if any(i in graph.constant_map for i in n.inputs) or not whole else list(n.inputs)
    inputs = n.inputs[:1] if n.op in (Op.BATCH_NORM, Op.CHANNEL_NORM, Op.GROUP_NORM) else [i for i in n.inputs if i is not None]
    operands = []
    for i in inputs:
        t = graph.types[i]
        shape = aligned_4d(t.shape) if isinstance(t, TensorType) else None
        if shape is None or shape[1] not in (1, channels):
            return None
        # one pixel broadcast over a map (an SE gate): stored alike in both layouts, the backend reshapes it
        broadcast_pixel = shape[2:] == (1, 1) and n.type.shape[2:] != (1, 1)
        if shape[1] == channels and channels > 1 and i not in graph.constant_map and not broadcast_pixel:
            operands.append(i)
    return operands


# fused kernels that read and write padded blocks: the inverted residual's (schedules/fused_block.py: its
# channels are padded to vectors with zeros inside anyway) and the squeeze-excite's (zero pad lanes stay zero)
PADDED_FUSED_KINDS = frozenset({fused_block.KIND, fused_block.PARTIAL_KIND, squeeze_excite.KIND})
PADDED_FILL = 0.75  # the least share of a padded value's stored channels that are real (24 of 32, 40 of 48)

# layout-preserving ops that map zero inputs to zero outputs, so a padded value's pad lanes stay zero
_ZERO_TO_ZERO = frozenset({
    Op.RELU, Op.GELU, Op.SILU, Op.TANH, Op.HARDSWISH, Op.IDENTITY, Op.MUL, Op.BATCH_NORM,
    Op.MAX_POOL2D, Op.AVG_POOL2D, Op.ADAPTIVE_AVG_POOL2D, Op.CHANNEL_NORM,  # (the constants padded with zeros)
})
_ZERO_TO_ZERO_ATEN = frozenset(f"aten.{name}" for name in (
    "leaky_relu.default", "elu.default", "selu.default", "mish.default", "square.default", "abs.default",
    "neg.default", "sqrt.default", "sin.default", "floor.default", "ceil.default", "round.default",
    "sign.default", "erf.default", "contiguous.default", "clone.default"))


def keeps_zero_lanes(graph: Graph, n: Node) -> bool:
    """Whether layout-preserving op ``n`` writes zeros where its blocked operands hold zeros (the pad lanes of a
    padded value), given constants padded with zeros."""
    if n.op in _ZERO_TO_ZERO:
        return True
    if n.op in (Op.ADD, Op.SUB):  # no non-zero scalar, and no operand of one channel broadcast over the lanes
        return n.attrs.scalar in (None, 0) and all(
            (aligned_4d(graph.types[i].shape) or (0, 0))[1] == n.type.shape[1] for i in n.inputs if i is not None)
    if n.op is Op.CLAMP:
        return (n.attrs.min is None or n.attrs.min <= 0) and (n.attrs.max is None or n.attrs.max >= 0)
    if n.op is Op.MEAN:
        return True  # over H and W (preserves_layout checked it)
    if n.op is Op.TORCH:
        if is_spatial_pad(n):
            return pad_arguments(n.attrs)[2] in (None, 0)
        return (n.attrs.target in _ZERO_TO_ZERO_ATEN | RESIZE_TARGETS or is_spatial_norm(graph, n)
                or (n.attrs.target in SLICE_TARGETS and not _slices_channels(n)))
    return False


def _slices_channels(n: Node) -> bool:
    return int(n.attrs.args[1] if len(n.attrs.args) > 1 else 0) % 4 == 1


def is_padded(t, block: int) -> bool:
    """A 4-D tensor type whose channels don't fill whole blocks of ``block``."""
    return isinstance(t, TensorType) and t.rank == 4 and t.shape[1] % block != 0


def _blockable(t, block: int) -> bool:
    if isinstance(t, TupleType):  # a channel split: every part in whole blocks
        return bool(t.elements) and all(_blockable(e, block) and not is_padded(e, block) for e in t.elements)
    if not (isinstance(t, TensorType) and t.dtype == "f32" and t.rank == 4):
        return False
    channels = t.shape[1]
    return channels % block == 0 or (channels >= PADDED_FILL * padded_channels(channels, block)
                                     and t.shape[2] * t.shape[3] > 1)


def _pads_alike(graph: Graph, n: Node, block: int) -> bool:
    """A conv that can write a padded output: one group (its extra output channels get zero weights), or
    groups of as many outputs as inputs whose width divides the block, depthwise ones included (its input
    then padded alike, with whole groups of zeros: see ``_conv_operands`` and conv_spec.pad_to_blocks)."""
    spec = conv_spec_of(graph, n)
    return spec is not None and (spec.groups == 1 or conv_spec.pads_by_groups(spec, block))


def _conv_operands(graph: Graph, n: Node, block: int) -> list[str]:
    """The values a conv's own layout depends on: a grouped conv with a padded side runs over whole blocks on
    both sides (conv_spec.pad_to_blocks), so its input and output are blocked together or not at all."""
    padded = is_padded(n.type, block) or is_padded(graph.types[n.inputs[0]], block)
    return [n.inputs[0]] if padded and n.attrs.groups > 1 else []


def runs_blocked(graph: Graph, n: Node, lanes: int) -> bool:
    """A conv whose lowering reads and writes blocked tensors at full speed (Lowering.blocked_io)."""
    spec = conv_spec_of(graph, n)
    return spec is not None and works_blocked(n.attrs.lowering or "direct", spec, lanes)


def _reads_blocked(graph: Graph, reader: Node, value: str, blocked: set[str],
                   conv_runs_blocked: Callable[[Node], bool], block: int) -> bool:
    """Whether ``reader`` takes ``value`` blocked, given the values currently chosen to be blocked."""
    t = graph.types[value]
    if isinstance(t, TensorType) and t.shape[2:] == (1, 1):
        return True
    padded = is_padded(t, block)
    if reader.op is Op.CONV2D:
        if padded and reader.attrs.groups > 1 and reader.name not in blocked:  # see _conv_operands
            return False
        return conv_runs_blocked(reader) and reader.inputs[0] == value and value not in reader.inputs[1:]
    if reader.op is Op.FUSED_BLOCK:  # its kernels read each input (and the residual) in either layout
        return not padded or (reader.attrs.kind in PADDED_FUSED_KINDS and reader.inputs[0] == value)
    if is_spatial_mean(graph, reader) and (not reader.attrs.keepdim or padded):
        return True  # it writes [N, C] (or [N, C, 1, 1], a squeeze-excite's, of a padded value) in NCHW
    if padded and reader.op is Op.ADAPTIVE_AVG_POOL2D and reader.type.shape[2:] == (1, 1):
        return True  # as the mean: a squeeze-excite's pool writes [N, C, 1, 1] in NCHW
    return reader.name in blocked


def blocked_values(graph: Graph, block: int, conv_runs_blocked: Callable[[Node], bool] | None = None) -> set[str]:
    """The names of the values block_layout stores in blocks of ``block`` channels. ``conv_runs_blocked``
    replaces the question asked of convs (default: whether the chosen lowering runs blocked; select_lowering
    asks whether any lowering could, to know which convs may sit between blocked neighbours)."""
    if conv_runs_blocked is None:
        conv_runs_blocked = lambda n: runs_blocked(graph, n, block)  # noqa: E731
    operands: dict[str, list[str]] = {}
    candidates: set[str] = set()
    for n in graph.nodes:  # topological order: an op's operands are decided before it
        if not _blockable(n.type, block):
            continue
        padded = is_padded(n.type, block)
        padded_io = padded or (n.op is Op.CONV2D and is_padded(graph.types[n.inputs[0]], block))
        if n.op is Op.CONV2D and conv_runs_blocked(n) and (not padded_io or _pads_alike(graph, n, block)):
            ops = _conv_operands(graph, n, block)
            if all(i in candidates for i in ops):
                operands[n.name] = ops
                candidates.add(n.name)
        elif n.op is Op.FUSED_BLOCK and (not padded or n.attrs.kind in PADDED_FUSED_KINDS):
            residual = n.attrs.body and n.attrs.body[-1].op is Op.ADD
            operands[n.name] = [n.inputs[0]] if padded and residual else []  # x, padded alike (fused_block.py)
            candidates.add(n.name)
        elif preserves_layout(graph, n, block) and (not padded or keeps_zero_lanes(graph, n)):
            ops = channel_operands(graph, n, block)
            if ops and all(i in candidates for i in ops):
                operands[n.name] = ops
                candidates.add(n.name)
    candidates -= set(graph.outputs)
    changed = True
    while changed:
        changed = False
        for name in sorted(candidates):
            readers = graph.users.get(name, ())
            dropped_operand = any(i not in candidates for i in operands.get(name, ()))
            if dropped_operand or not all(_reads_blocked(graph, r, name, candidates, conv_runs_blocked, block)
                                          for r in readers):
                candidates.discard(name)
                changed = True
    return candidates


def block_layout(graph: Graph, *, lanes: int) -> Graph:
    blocked = blocked_values(graph, lanes)
    if not blocked:
        return graph
    layout = blocked_layout(lanes)

    def with_layout(t):
        if isinstance(t, TupleType):
            return TupleType(tuple(replace(e, layout=layout) for e in t.elements))
        return replace(t, layout=layout)

    nodes = tuple(replace(n, type=with_layout(n.type)) if n.name in blocked else n for n in graph.nodes)
    return graph.replace(nodes=nodes)
