"""Tune-mode ConvBN for training ("Efficient ConvBN Blocks for Transfer Learning and Beyond").

An eval-mode BatchNorm after a conv becomes one conv whose weight and bias are computed from the
conv's and BN's tensors on every call, inside the graph:

    bn(conv(x, W, b))  =>  conv(x, W * reshape(s, (C, 1, 1, 1)), (b - mu) * s + beta)
                           s = gamma * rsqrt(var + eps)

Unlike deploy-mode folding (fold_conv_bn) nothing is precomputed: W, b, gamma and beta stay the
model's trainable parameters under their own names (so state_dict keys are unchanged), gradients are
those of Eval mode, and the conv's output is never saved for BN's backward, which is where the memory
goes. The folded weight is recomputed each call, so it is never stale after an optimizer step
(inductor's version, pytorch#108863).

Preconditions: BN is in eval mode (the only kind the IR's batch_norm op has; training-mode BN is
refused at capture); the conv's output has one reader, the BN; the conv's weight is a constant.
Runs in the train pipeline after canonicalize.
"""

from __future__ import annotations

from ..ir.graph import Node
from ..ir.ops import BinaryAttrs, NoAttrs, Op, ShapeAttrs
from ..ir.types import TensorType
from .rewrite import Context, Rule, apply_rules


def _conv_then_bn(bn: Node, ctx: Context) -> str | None:
    conv = ctx.producer(bn.inputs[0])
    if conv is None or conv.op is not Op.CONV2D or ctx.num_uses(conv.name) != 1:
        return None
    if ctx.constant(conv.inputs[1]) is None:
        return None
    x, weight, bias = (conv.inputs + (None,))[:3]
    gamma, beta, mean, var = bn.inputs[1:]
    vec = ctx.type(var)
    channels = vec.shape[0]
    sources = (conv, bn)

    def emit(op, inputs, attrs, ty, base):
        return ctx.emit(op, inputs, attrs, ty, base=f"{bn.name}_{base}", sources=sources)

    scale = emit(Op.RSQRT, [emit(Op.ADD, [var], BinaryAttrs(bn.attrs.eps), vec, "var_eps")], NoAttrs(), vec, "inv_std")
    if gamma is not None:
        scale = emit(Op.MUL, [gamma, scale], BinaryAttrs(), vec, "scale")
    w_type = ctx.type(weight)
    scale_4d = emit(Op.RESHAPE, [scale], ShapeAttrs((channels, 1, 1, 1)), TensorType((channels, 1, 1, 1), vec.dtype),
                    "scale_4d")
    w = emit(Op.MUL, [weight, scale_4d], BinaryAttrs(), w_type, "weight")
    centred = emit(Op.SUB, [bias, mean], BinaryAttrs(), vec, "centred") if bias is not None else \
        emit(Op.MUL, [mean], BinaryAttrs(-1.0), vec, "centred")
    b = emit(Op.MUL, [centred, scale], BinaryAttrs(), vec, "bias")
    if beta is not None:
        b = emit(Op.ADD, [b, beta], BinaryAttrs(), vec, "bias_beta")
    return ctx.emit(Op.CONV2D, (x, w, b), conv.attrs, bn.type, base=conv.name, sources=sources)


RULES = (Rule("conv_then_bn", frozenset({Op.BATCH_NORM}), _conv_then_bn),)


def tune_conv_bn(graph):
    return apply_rules(graph, RULES, "tune_conv_bn")
