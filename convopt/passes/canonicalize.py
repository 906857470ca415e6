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
    permute(layer_norm(permute(x, (0,2,3,1)), (C,)), (0,3,1,2))
                                   => channel_norm(x)   (timm's LayerNorm2d: one op, no transposes)
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
from ..ir.ops import BinaryAttrs, NormAttrs, Op, Ref
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


def _channel_norm(node: Node, ctx: Context) -> str | None:
    """A layer norm over the channels of NCHW written as NHWC transposes around it, each inner value read once."""
    if node.attrs.dims != (0, 3, 1, 2):
        return None
    norm = ctx.producer(node.inputs[0])
    if norm is None or norm.op is not Op.LAYER_NORM or ctx.num_uses(norm.name) != 1:
        return None
    to_nhwc = ctx.producer(norm.inputs[0])
    if to_nhwc is None or to_nhwc.op is not Op.PERMUTE or to_nhwc.attrs.dims != (0, 2, 3, 1) \
            or ctx.num_uses(to_nhwc.name) != 1:
        return None
    x = to_nhwc.inputs[0]
    if norm.attrs.normalized_shape != (ctx.type(x).shape[1],) or ctx.type(x) != node.type:
        return None
    return ctx.emit(Op.CHANNEL_NORM, (x, *norm.inputs[1:]), NormAttrs(norm.attrs.eps), node.type, base=norm.name,
                    sources=(to_nhwc, norm, node))


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
    Rule("channel_norm", frozenset({Op.PERMUTE}), _channel_norm),
    Rule("addcmul", frozenset({Op.TORCH}), _addcmul),
    Rule("eval_dropout", frozenset({Op.TORCH}), _eval_dropout),
)


def canonicalize(graph: Graph) -> Graph:
    return apply_rules(graph, RULES, "canonicalize")
