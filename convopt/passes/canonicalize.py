"""Canonicalize: remove ops that compute nothing, so later passes see one spelling of each pattern.

Rewrites (each only when the result's type equals the replacement's type):

    identity(x)                    => x     clone / alias / detach / eval-mode dropout
    dropout(x, p=0)                => x
    aten dropout(x, p, train=False) => x    (feature_dropout, alpha_dropout: Dropout2d kept by capture)
    reshape(x) to x's own shape    => x
    reshape(reshape(x, s1), s2)    => reshape(x, s2)
    permute(x, (0, 1, ..., n-1))   => x
    x + 0, x - 0, x * 1, x / 1     => x     (scalar right operand)
    cat([x])                       => x
    permute(f_k(... f_1(permute(x, (0,2,3,1)))), (0,3,1,2))
                                   => g_k(... g_1(x))   a channels-last island over NCHW: each f_i maps every
                                      pixel's channel vector on its own, its g_i does the same over dim 1:
        layer_norm(., (C,))        => channel_norm(.)            (timm's LayerNorm2d: one op, no transposes)
        linear(., W[O,C], b)       => conv2d(., reshape(W, (O,C,1,1)), b)   1x1 (ConvNeXt's MLP on NHWC)
        elementwise(.)             => elementwise(.)             (relu, gelu, ..., a scalar operand)
        binary(., v)               => binary(., reshape(v, (C,1,1)))        v of shape (C,), ..., (1,1,1,C)
      (x of rank 4 and floating dtype; every value of the island read once)
    addcmul(s, a, b, value=v)      => s + (a * v) * b   (v = 1: s + a * b; ConvNeXt V2's GRN)
    addcdiv(s, a, b, value=v)      => s + (a * v) / b
    (tensors of one floating dtype; ops every backend and pass knows; PyTorch's kernel fuses the multiply-add,
    so results agree to rounding)

Preconditions: none. Runs first in every pipeline and is cheap enough to run again after passes that
leave such ops behind.
"""

from __future__ import annotations

import torch

from ..ir.graph import Graph, Node
from ..ir.ops import BINARY_ELEMENTWISE, UNARY_ELEMENTWISE, BinaryAttrs, Conv2dAttrs, NormAttrs, Op, Ref, ShapeAttrs
from ..ir.types import TensorType
from .rewrite import Context, Rule, apply_rules

_NEUTRAL_SCALAR = {Op.ADD: 0, Op.SUB: 0, Op.MUL: 1, Op.DIV: 1}


def _forward_input(node: Node, ctx: Context) -> str | None:
    """Replace the node by its only tensor input when the op is a no-op here and types agree."""
    source = node.inputs[0]
    if ctx.type(source) != node.type:
        return None
    if node.op in (Op.IDENTITY, Op.RESHAPE, Op.CAT):
        return source if len(node.inputs) == 1 else None
    if node.op is Op.DROPOUT:
        return source if node.attrs.p == 0 else None
    if node.op is Op.PERMUTE:
        return source if node.attrs.dims == tuple(range(len(node.attrs.dims))) else None
    if node.op in _NEUTRAL_SCALAR:
        scalar = node.attrs.scalar
        return source if scalar is not None and scalar == _NEUTRAL_SCALAR[node.op] else None
    return None


def _reshape_of_reshape(node: Node, ctx: Context) -> str | None:
    inner = ctx.producer(node.inputs[0])
    if inner is None or inner.op is not Op.RESHAPE:
        return None
    return ctx.emit(Op.RESHAPE, inner.inputs, node.attrs, node.type, base=node.name, sources=(inner, node))


_CHANNELS_LAST, _CHANNELS_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


def _nchw(t: TensorType) -> TensorType:
    n, h, w, c = t.shape
    return TensorType((n, c, h, w), t.dtype)


def _per_channel_vector(t, channels: int) -> bool:
    """A tensor that broadcasts along the last dim of an N,H,W,C value only: shape (C,), (1, C), ... (1, 1, 1, C)."""
    return isinstance(t, TensorType) and 1 <= len(t.shape) <= 4 and t.shape[-1] == channels \
        and all(d == 1 for d in t.shape[:-1])


def _pixel_operand(node: Node, ctx: Context) -> int | None:
    """The index of the input through which ``node`` maps each pixel's channel vector of an N,H,W,C value on
    its own (the other inputs are weights), or None when it mixes pixels or isn't such an op."""
    out = node.type
    if not isinstance(out, TensorType) or len(out.shape) != 4 or not out.torch_dtype.is_floating_point:
        return None
    x = ctx.type(node.inputs[0])
    if node.op in UNARY_ELEMENTWISE:
        return 0
    if node.op is Op.LAYER_NORM:
        return 0 if node.attrs.normalized_shape == (x.shape[-1],) else None
    if node.op is Op.LINEAR:
        weight = ctx.type(node.inputs[1])
        return 0 if isinstance(weight, TensorType) and len(weight.shape) == 2 else None
    if node.op in BINARY_ELEMENTWISE:
        if len(node.inputs) == 1:
            return 0 if x == out else None  # a scalar right operand
        for i, other in ((0, 1), (1, 0)):
            if ctx.type(node.inputs[i]) == out and _per_channel_vector(ctx.type(node.inputs[other]), out.shape[-1]):
                return i
    return None


def _emit_channels_first(step: Node, pixel: int, x: str, ctx: Context, sources: tuple[Node, ...]) -> str:
    """``step`` (an op of a channels-last island) applied to the N,C,H,W value ``x`` in place of its input
    ``pixel`` (``_pixel_operand``)."""
    out = _nchw(step.type)
    if step.op is Op.LAYER_NORM:
        return ctx.emit(Op.CHANNEL_NORM, (x, *step.inputs[1:]), NormAttrs(step.attrs.eps), out, base=step.name,
                        sources=sources)
    if step.op is Op.LINEAR:
        weight = ctx.type(step.inputs[1])
        as_conv = ctx.emit(Op.RESHAPE, (step.inputs[1],), ShapeAttrs((*weight.shape, 1, 1)),
                           TensorType((*weight.shape, 1, 1), weight.dtype), base=step.name, sources=sources)
        return ctx.emit(Op.CONV2D, (x, as_conv, *step.inputs[2:]), Conv2dAttrs((1, 1), (0, 0), (1, 1), 1), out,
                        base=step.name, sources=sources)
    inputs = list(step.inputs)
    inputs[pixel] = x
    if len(inputs) == 2:  # the per-channel operand, as (C, 1, 1)
        other = inputs[1 - pixel]
        channels = out.shape[1]
        inputs[1 - pixel] = ctx.emit(Op.RESHAPE, (other,), ShapeAttrs((channels, 1, 1)),
                                     TensorType((channels, 1, 1), ctx.type(other).dtype), base=step.name,
                                     sources=sources)
    return ctx.emit(step.op, inputs, step.attrs, out, base=step.name, sources=sources)


def _channels_first(node: Node, ctx: Context) -> str | None:
    """An island of per-pixel ops between NHWC transposes, each value read once, as the same ops over NCHW."""
    if node.attrs.dims != _CHANNELS_FIRST:
        return None
    island = []
    value = node.inputs[0]
    while True:
        step = ctx.producer(value)
        if step is None or ctx.num_uses(step.name) != 1:
            return None
        if step.op is Op.PERMUTE:
            if step.attrs.dims != _CHANNELS_LAST or not island:
                return None
            to_nhwc = step
            break
        pixel = _pixel_operand(step, ctx)
        if pixel is None:
            return None
        island.append((step, pixel))
        value = step.inputs[pixel]
    island.reverse()
    current = to_nhwc.inputs[0]
    for i, (step, pixel) in enumerate(island):
        sources = (*((to_nhwc,) if i == 0 else ()), step, *((node,) if i == len(island) - 1 else ()))
        current = _emit_channels_first(step, pixel, current, ctx, sources)
    return current


_POINTWISE_ATEN = {"aten.addcmul.default": Op.MUL, "aten.addcdiv.default": Op.DIV}


def _addcmul(node: Node, ctx: Context) -> str | None:
    """addcmul / addcdiv of three tensors as the binary ops they are made of."""
    if node.op is not Op.TORCH or node.attrs.target not in _POINTWISE_ATEN or not isinstance(node.type, TensorType):
        return None
    args = node.attrs.args
    value = args[3] if len(args) > 3 else 1
    if len(args) < 3 or not all(isinstance(a, Ref) for a in args[:3]) or not isinstance(value, (int, float)) \
            or isinstance(value, bool):
        return None
    s, a, b = (node.inputs[r.index] for r in args[:3])
    types = [ctx.type(v) for v in (s, a, b)]
    if not all(isinstance(t, TensorType) and t.dtype == node.type.dtype for t in types) \
            or not node.type.torch_dtype.is_floating_point:
        return None
    if value != 1:
        a = ctx.emit(Op.MUL, (a,), BinaryAttrs(float(value)), types[1], base=node.name, sources=(node,))
    shape = torch.broadcast_shapes(types[1].shape, types[2].shape)
    product = ctx.emit(_POINTWISE_ATEN[node.attrs.target], (a, b), BinaryAttrs(), TensorType(shape, node.type.dtype),
                       base=node.name, sources=(node,))
    return ctx.emit(Op.ADD, (s, product), BinaryAttrs(), node.type, base=node.name, sources=(node,))


# ATen's dropouts that capture keeps as they are (Dropout2d's feature_dropout in eval mode: BAT's attention):
# (input, p, train), the identity when not training or p = 0
_ATEN_DROPOUTS = frozenset(f"aten.{name}.default" for name in
                           ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"))


def _eval_dropout(node: Node, ctx: Context) -> str | None:
    """An ATen dropout that drops nothing (train=False, or p = 0): its input."""
    if node.op is not Op.TORCH or node.attrs.target not in _ATEN_DROPOUTS:
        return None
    args = node.attrs.args
    if len(args) < 3 or not isinstance(args[0], Ref) or not (args[2] is False or args[1] == 0):
        return None
    source = node.inputs[args[0].index]
    return source if ctx.type(source) == node.type else None


RULES = (
    Rule("forward_input", frozenset({Op.IDENTITY, Op.DROPOUT, Op.RESHAPE, Op.PERMUTE, Op.CAT,
                                     *_NEUTRAL_SCALAR}), _forward_input),
    Rule("reshape_of_reshape", frozenset({Op.RESHAPE}), _reshape_of_reshape),
    Rule("channels_first", frozenset({Op.PERMUTE}), _channels_first),
    Rule("addcmul", frozenset({Op.TORCH}), _addcmul),
    Rule("eval_dropout", frozenset({Op.TORCH}), _eval_dropout),
)


def canonicalize(graph: Graph) -> Graph:
    return apply_rules(graph, RULES, "canonicalize")
