"""Deploy-mode ConvBN folding: an eval-mode BatchNorm next to a conv (or linear) joins its weights.

With ``s = gamma / sqrt(var + eps)`` and ``t = beta - mu * s`` (gamma = 1, beta = 0 when BN has no affine):

    bn(conv(x, W, b))    => conv(x, W * s[o], (b - mu) * s + beta)                       (conv_then_bn)
    bn(linear(x, W, b))  => linear(x, W * s[o], (b - mu) * s + beta)    2-D input only   (linear_then_bn)
    conv(bn(x), W, b)    => conv(x, W * s[i], b + sum_{i,kh,kw} W[o,i,kh,kw] * t[i])     (bn_then_conv)
    linear(bn(x), W, b)  => linear(x, W * s[i], b + W @ t)              2-D input only   (bn_then_linear)
    bn(cat(conv_1(x_1), ..., conv_k(x_k)))  =>  cat(conv_1 with s[C_1] and t[C_1], ...)     (cat_then_bn)

with C_j the channels the j-th part fills in the concatenation along dim 1 (MixNet's mixed-kernel convs
and grouped pointwise convs split, convolve and concatenate the channels before one BN).

where ``s[o]`` scales output channels and ``s[i]`` input channels (for grouped convs, the input
channel that weight column i of output o reads). Folding happens in float64 and is cast back.

Preconditions, checked per match: W, b and the four BN tensors are constants with values; the first
op's result has exactly one reader (the second op), so nothing else sees the unfolded value (for
cat_then_bn: every conv's result is read by the concatenation only, and that by BN only). The
BN-then-conv direction also needs the conv to have zero padding: the conv would pad BN's output
with zeros, which are not BN(0) = t. A conv whose weight is shared by several call sites gets a new
folded weight for each site, so every caller stays correct (torch.fx's fuse gets this wrong,
pytorch#104593).

Runs in the inference pipeline after canonicalize, before reparameterization.
"""

from __future__ import annotations

import torch

from ..ir.graph import Node
from ..ir.ops import Op
from .rewrite import Context, Rule, apply_rules


def _values(ctx: Context, names) -> list[torch.Tensor | None] | None:
    """The constant tensors behind ``names`` (None stays None), in float64; None if any is not constant."""
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        c = ctx.constant(name)
        if c is None or c.data is None or not c.data.is_floating_point():
            return None
        out.append(c.data.double())
    return out


def scale_shift_of_bn(gamma, beta, mean, var, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with bn(x) = x * s + t per channel; gamma and beta may be None (no affine)."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    return scale, -mean * scale + (beta if beta is not None else 0.0)


def bn_scale_shift(ctx: Context, bn: Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(s, t) of a batch_norm node, or None if its tensors are not constants."""
    values = _values(ctx, bn.inputs[1:])
    if values is None or values[2] is None or values[3] is None:
        return None
    return scale_shift_of_bn(*values, bn.attrs.eps)


def _emit(ctx: Context, op: Op, x: str, weight: torch.Tensor, bias: torch.Tensor, like: Node, sources) -> str:
    dtype = ctx.constant(like.inputs[1]).data.dtype
    prefix = like.inputs[1].rpartition(".")[0]
    prefix = f"{prefix}." if prefix else ""
    w = ctx.add_constant(f"{prefix}folded_weight", weight.to(dtype))
    b = ctx.add_constant(f"{prefix}folded_bias", bias.to(dtype))
    return ctx.emit(op, (x, w, b), like.attrs, like.type, base=like.name, sources=sources)


def _scaled_by_outputs(ctx: Context, first: Node, s: torch.Tensor, t: torch.Tensor, sources) -> str | None:
    """``first`` (a conv or linear with constant weights) followed by x * s + t per output channel."""
    weights = _values(ctx, first.inputs[1:])
    if weights is None:
        return None
    w, b = (weights + [None])[:2]
    bias = (b if b is not None else torch.zeros_like(s)) * s + t
    w = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    return _emit(ctx, first.op, first.inputs[0], w, bias, first, sources)


def _weighted_then_bn(bn: Node, ctx: Context) -> str | None:
    first = ctx.producer(bn.inputs[0])
    if first is None or first.op not in (Op.CONV2D, Op.LINEAR) or ctx.num_uses(first.name) != 1:
        return None
    if first.op is Op.LINEAR and len(first.type.shape) != 2:
        return None  # BatchNorm1d on (N, L, C) normalizes dim 1, not linear's features
    affine = bn_scale_shift(ctx, bn)
    if affine is None or _values(ctx, first.inputs[1:]) is None:
        return None
    return _scaled_by_outputs(ctx, first, *affine, (first, bn))


def _cat_then_bn(bn: Node, ctx: Context) -> str | None:
    cat = ctx.producer(bn.inputs[0])
    if cat is None or cat.op is not Op.CAT or cat.type.rank != 4 or cat.attrs.dim % 4 != 1 or ctx.num_uses(cat.name) != 1:
        return None
    parts = [ctx.producer(i) for i in cat.inputs]
    if any(p is None or p.op is not Op.CONV2D or ctx.num_uses(p.name) != cat.inputs.count(p.name)
           or cat.inputs.count(p.name) != 1 or _values(ctx, p.inputs[1:]) is None for p in parts):
        return None
    affine = bn_scale_shift(ctx, bn)
    if affine is None:
        return None
    (s, t), start, folded = affine, 0, []
    for p in parts:
        end = start + p.type.shape[1]
        folded.append(_scaled_by_outputs(ctx, p, s[start:end], t[start:end], (p, bn)))
        start = end
    return ctx.emit(Op.CAT, folded, cat.attrs, bn.type, base=cat.name, sources=(cat, bn))


def _bn_then_weighted(node: Node, ctx: Context) -> str | None:
    bn = ctx.producer(node.inputs[0])
    if bn is None or bn.op is not Op.BATCH_NORM or ctx.num_uses(bn.name) != 1:
        return None
    if node.op is Op.CONV2D and node.attrs.padding != (0, 0):
        return None  # zero padding of BN's output is not BN of zero padding
    if node.op is Op.LINEAR and len(bn.type.shape) != 2:
        return None
    weights = _values(ctx, node.inputs[1:])
    affine = bn_scale_shift(ctx, bn)
    if weights is None or affine is None:
        return None
    (w, b), (s, t) = (weights + [None])[:2], affine
    if node.op is Op.CONV2D:
        groups = node.attrs.groups
        cout, cin_per_group = w.shape[:2]
        # input channel read by weight column i of output o: (o // (cout/groups)) * cin_per_group + i
        group_of_out = torch.arange(cout) // (cout // groups)
        channel = group_of_out[:, None] * cin_per_group + torch.arange(cin_per_group)[None, :]
        w_new = w * s[channel][:, :, None, None]
        b_extra = (w * t[channel][:, :, None, None]).sum(dim=(1, 2, 3))
    else:
        w_new, b_extra = w * s[None, :], w @ t
    bias = (b if b is not None else 0.0) + b_extra
    return _emit(ctx, node.op, bn.inputs[0], w_new, bias, node, (bn, node))


RULES = (
    Rule("weighted_then_bn", frozenset({Op.BATCH_NORM}), _weighted_then_bn),
    Rule("cat_then_bn", frozenset({Op.BATCH_NORM}), _cat_then_bn),
    Rule("bn_then_weighted", frozenset({Op.CONV2D, Op.LINEAR}), _bn_then_weighted),
)


def fold_conv_bn(graph):
    return apply_rules(graph, RULES, "fold_conv_bn")



