"""IR -> Relax: one BlockBuilder function ``main`` computing the graph, with weights as constants.

Per-op lowering lives in one table, ``EMITTERS`` (op -> function(ctx, node, inputs) -> relax.Expr).
A node whose op has no entry (an opaque ``torch`` node outside aten_emit's tables, or whose arguments
its emitter doesn't cover) runs its ATen op in PyTorch inside the module when ``fallback=True``
(torch_fallback.py: a ``call_dps_packed`` to a function convopt registers); otherwise it is refused with
an error naming the node and the op.

Values with a blocked layout (``TensorType.layout``, chosen by passes/block_layout.py) are Relax tensors
of the stored shape [N, C/b, H, W, b]. ``operands`` hands each emitter its inputs in the layout it
computes in: a layout-preserving op with a blocked output gets its constants re-blocked once and its
one-channel operands broadcastable (a trailing 1); a 1x1 map is stored alike in both layouts and is
reshaped for free where a reader needs it in the other (a squeeze-excite gate computed in NCHW scales a
blocked tensor).
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch
from tvm import relax

from ..ir.graph import Graph, Node, op_label
from ..ir.layout import aligned_4d, block_of, padded_channels, stored_shape, to_blocked
from ..ir.ops import Op
from ..ir.types import TensorType, TupleType, full_dtype_name
from ..target import Target
from . import torch_fallback
from .aten_emit import AtenEmitError, emit_aten, emits

FALLBACK_ATTR = "convopt.torch_fallback"  # main's attr: JSON {fallback function: [IR nodes]}


class UnsupportedOpError(NotImplementedError):
    pass


def struct_info(t: TensorType):
    return relax.TensorType(t.shape, full_dtype_name(t.dtype))


class EmitContext:
    def __init__(self, graph: Graph, bb: relax.BlockBuilder, cpu: Target | None = None):
        self.graph, self.bb = graph, bb
        self.cpu = cpu  # a CPU target: convopt's hand-scheduled kernels where it has them

    @property
    def own_kernels(self) -> bool:
        return self.cpu is not None

    @property
    def lanes(self) -> int:  # the CPU's SIMD width
        return self.cpu.lanes if self.cpu is not None else 0

    def const(self, value, dtype: str) -> relax.Constant:
        return relax.const(np.asarray(value, dtype=full_dtype_name(dtype)))

    def constant_data(self, name: str | None) -> torch.Tensor | None:
        c = self.graph.constant_map.get(name) if name is not None else None
        return c.data if c is not None else None


def _layout_of(t) -> str:
    """A tensor's layout; a tuple's (a channel split's parts) when all its parts share one."""
    if isinstance(t, TupleType):
        layouts = {e.layout for e in t.elements}
        return layouts.pop() if len(layouts) == 1 else ""
    return t.layout if isinstance(t, TensorType) else ""


def _per_channel(ctx: EmitContext, values: torch.Tensor, rank: int, dtype: str, layout: str = "") -> relax.Constant:
    shape = (1, -1) + (1,) * (rank - 2)
    array = values.detach().double().reshape(shape).numpy()
    block = block_of(layout)
    return ctx.const(to_blocked(array, block) if block else array, dtype)


def operands(ctx: EmitContext, n: Node, env: dict[str, relax.Expr]) -> list:
    """The node's inputs as its emitter reads them (see the module docstring); None stays None."""
    out_block = block_of(_layout_of(n.type))
    args = []
    for name in n.inputs:
        if name is None:
            args.append(None)
            continue
        expr, t = env[name], ctx.graph.types[name]
        in_block = block_of(_layout_of(t))
        if out_block and not in_block:  # a broadcast operand of a blocked elementwise op
            shape = aligned_4d(t.shape)
            data = ctx.constant_data(name)
            if shape[1] > 1 and shape[2:] == (1, 1) and data is None:  # one pixel: the same bytes blocked
                pad = padded_channels(shape[1], out_block) - shape[1]
                if pad:  # over padded blocks: zeros for the pad lanes, then the same bytes
                    expr = relax.op.nn.pad(relax.op.reshape(expr, shape), [0, 0, 0, pad, 0, 0, 0, 0])
                expr = relax.op.reshape(expr, (shape[0], (shape[1] + pad) // out_block, 1, 1, out_block))
            elif shape[1] > 1:  # C channels: a constant (block_layout keeps every other such operand blocked)
                if data is None:
                    raise UnsupportedOpError(f"node %{n.name} ({op_label(n)}) is blocked but reads %{name} in NCHW")
                array = data.detach().cpu().numpy().reshape(shape)
                expr = relax.const(to_blocked(array, out_block))
            else:
                expr = relax.op.reshape(expr, shape + (1,))
        elif in_block and not out_block and not _reads_blocked(ctx.graph, n):
            if t.shape[2:] != (1, 1):
                raise UnsupportedOpError(f"node %{n.name} ({op_label(n)}) reads %{name} in layout {t.layout}")
            expr = relax.op.reshape(expr, t.shape)  # a 1x1 map: the same bytes in both layouts
        args.append(expr)
    return args


def _reads_blocked(graph: Graph, n: Node) -> bool:
    """Ops that take a blocked input and write an NCHW output themselves."""
    from ..passes.block_layout import is_spatial_mean

    return is_spatial_mean(graph, n) or n.op is Op.ADAPTIVE_AVG_POOL2D


def _conv2d(ctx, n: Node, x):
    a = n.attrs
    out = relax.op.nn.conv2d(x[0], x[1], strides=a.stride, padding=a.padding * 2, dilation=a.dilation,
                             groups=a.groups)
    if len(x) > 2 and x[2] is not None:
        out = relax.op.add(out, relax.op.reshape(x[2], (1, -1, 1, 1)))
    return out


def _linear(ctx, n: Node, x):
    """x @ W.T + b; a constant W is transposed once here, not on every call (relax.op.linear would)."""
    weight = ctx.constant_data(n.inputs[1])
    if weight is None:
        return relax.op.linear(x[0], x[1], x[2] if len(x) > 2 else None)
    out = relax.op.matmul(x[0], relax.const(weight.detach().t().contiguous().cpu().numpy()))
    return relax.op.add(out, x[2]) if len(x) > 2 and x[2] is not None else out


def _batch_norm(ctx, n: Node, x):
    """Eval-mode BN with constant statistics: x * s + t, s and t computed once here."""
    from ..passes.fold_conv_bn import scale_shift_of_bn

    tensors = [ctx.constant_data(i) for i in n.inputs[1:]]
    if tensors[2] is None or tensors[3] is None or any(t is None and i is not None
                                                       for t, i in zip(tensors, n.inputs[1:])):
        raise UnsupportedOpError(f"node %{n.name}: batch_norm with non-constant statistics")
    s, t = scale_shift_of_bn(*[None if v is None else v.double() for v in tensors], n.attrs.eps)
    rank, dtype, layout = n.type.rank, n.type.dtype, n.type.layout
    return relax.op.add(relax.op.multiply(x[0], _per_channel(ctx, s, rank, dtype, layout)),
                        _per_channel(ctx, t, rank, dtype, layout))


def _norm_params(ctx, n: Node, x, shape):
    gamma = x[1] if x[1] is not None else ctx.const(np.ones(shape), n.type.dtype)
    beta = x[2] if x[2] is not None else ctx.const(np.zeros(shape), n.type.dtype)
    return gamma, beta


def _layer_norm(ctx, n: Node, x):
    """On the CPU convopt's kernel over rows (schedules/layer_norm.py: dlight's schedule recomputes the sums for
    every output element), else Relax's layer_norm."""
    shape = n.attrs.normalized_shape
    gamma, beta = _norm_params(ctx, n, x, shape)
    if ctx.own_kernels and n.type.dtype == "f32" and not n.type.layout:
        from ..schedules.layer_norm import row_prim_func

        size = int(np.prod(shape))
        rows = int(np.prod(n.type.shape)) // size
        func = (row_prim_func(rows, size, n.attrs.eps, ctx.lanes).without_attr("global_symbol")
                .with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True))
        gvar = ctx.bb.add_func(func, "convopt_layer_norm")
        flat = [ctx.bb.emit(relax.op.reshape(v, (rows, size) if v is x[0] else (size,))) for v in (x[0], gamma, beta)]
        out = ctx.bb.emit(relax.call_tir(gvar, flat, relax.TensorType((rows, size), "float32")))
        return relax.op.reshape(out, n.type.shape)
    axes = list(range(n.type.rank - len(shape), n.type.rank))
    return relax.op.nn.layer_norm(x[0], gamma, beta, axes, n.attrs.eps)


def _channel_norm(ctx, n: Node, x):
    """A layer norm over the channels: convopt's kernel on the CPU (schedules/layer_norm.py; NCHW or channel
    blocks), else layer_norm between NHWC transposes. Reads its weight and bias as they are (the constants are
    [C] in either layout)."""
    channels = n.type.shape[1]
    gamma, beta = (ctx.constant_data(i) for i in n.inputs[1:])
    if any(t is None and i is not None for t, i in zip((gamma, beta), n.inputs[1:])):
        raise UnsupportedOpError(f"node %{n.name}: channel_norm with non-constant weight or bias")
    gamma = np.ones(channels) if gamma is None else gamma.detach().double().numpy()
    beta = np.zeros(channels) if beta is None else beta.detach().double().numpy()
    stored = stored_shape(n.type.shape, n.type.layout)
    if len(stored) == 5 and stored[1] * stored[4] != channels:  # padded blocks: zero weight and bias for the pad lanes
        gamma, beta = (np.concatenate([v, np.zeros(stored[1] * stored[4] - channels)]) for v in (gamma, beta))
    gamma, beta = ctx.const(gamma, n.type.dtype), ctx.const(beta, n.type.dtype)
    if not ctx.own_kernels or n.type.dtype != "f32":
        if n.type.layout:
            raise UnsupportedOpError(f"node %{n.name}: channel_norm in layout {n.type.layout} needs the CPU kernel")
        nhwc = relax.op.permute_dims(x[0], [0, 2, 3, 1])
        return relax.op.permute_dims(relax.op.nn.layer_norm(nhwc, gamma, beta, [3], n.attrs.eps), [0, 3, 1, 2])
    from ..schedules.layer_norm import channel_prim_func as prim_func

    shape = tuple(stored_shape(n.type.shape, n.type.layout))  # the input's: channel_norm keeps its layout
    func = (prim_func(shape, n.attrs.eps, channels).without_attr("global_symbol").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))
    gvar = ctx.bb.add_func(func, "convopt_channel_norm")  # equal shapes share one function
    return relax.call_tir(gvar, [x[0], gamma, beta], relax.TensorType(shape, "float32"))


def _group_norm(ctx, n: Node, x):
    """On the CPU convopt's kernel (schedules/group_norm.py: its sums split over the channels, so that the
    cores share even one group), NCHW or in channel blocks of whole groups; else Relax's group norm."""
    block = block_of(n.type.layout)
    params = [ctx.constant_data(i) if i is not None else None for i in n.inputs[1:]]
    constant = all(t is not None or i is None for t, i in zip(params, n.inputs[1:]))
    if ctx.own_kernels and n.type.dtype == "f32" and n.type.rank == 4 and constant:
        from ..schedules.group_norm import group_norm_prim_func

        channels = n.type.shape[1]
        gamma, beta = (ctx.const(default if t is None else t.detach().double().numpy(), "f32")
                       for t, default in zip(params, (np.ones(channels), np.zeros(channels))))
        stored = tuple(stored_shape(n.type.shape, n.type.layout))
        flat = (*stored[:2], stored[2] * stored[3], *stored[4:])  # the pixels flattened: a free reshape
        func = (group_norm_prim_func(flat, n.attrs.num_groups, n.attrs.eps, ctx.lanes).without_attr("global_symbol")
                .with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True))
        gvar = ctx.bb.add_func(func, "convopt_group_norm")  # equal shapes share one function
        out = ctx.bb.emit(relax.call_tir(gvar, [ctx.bb.emit(relax.op.reshape(x[0], flat)), gamma, beta],
                                         relax.TensorType(flat, "float32")))
        return relax.op.reshape(out, stored)
    if block:
        # [N, C/b, H, W, b] whose groups are whole channel blocks (block_layout): the statistics are Relax's group
        # norm of the blocks (groups along axis 1, H, W and the lanes reduced); the affine per channel, blocked
        gamma, beta = (ctx.constant_data(i) for i in n.inputs[1:])
        if any(t is None and i is not None for t, i in zip((gamma, beta), n.inputs[1:])):
            raise UnsupportedOpError(f"node %{n.name}: blocked group_norm with non-constant weight or bias")
        blocks, dtype = n.type.shape[1] // block, n.type.dtype
        ones, zeros = ctx.const(np.ones(blocks), dtype), ctx.const(np.zeros(blocks), dtype)
        out = relax.op.nn.group_norm(x[0], ones, zeros, n.attrs.num_groups, 1, [2, 3, 4], n.attrs.eps)
        if gamma is not None:
            out = relax.op.multiply(out, _per_channel(ctx, gamma, 4, dtype, n.type.layout))
        if beta is not None:
            out = relax.op.add(out, _per_channel(ctx, beta, 4, dtype, n.type.layout))
        return out
    gamma, beta = _norm_params(ctx, n, x, (n.type.shape[1],))
    return relax.op.nn.group_norm(x[0], gamma, beta, n.attrs.num_groups, 1, list(range(2, n.type.rank)), n.attrs.eps)


def _clamp(ctx, n: Node, x):
    out = x[0]
    if n.attrs.min is not None:
        out = relax.op.maximum(out, ctx.const(n.attrs.min, n.type.dtype))
    if n.attrs.max is not None:
        out = relax.op.minimum(out, ctx.const(n.attrs.max, n.type.dtype))
    return out


def _hardswish(ctx, n: Node, x):
    three, six, zero = (ctx.const(v, n.type.dtype) for v in (3.0, 6.0, 0.0))
    gate = relax.op.minimum(relax.op.maximum(relax.op.add(x[0], three), zero), six)
    return relax.op.divide(relax.op.multiply(x[0], gate), six)


def _hardsigmoid(ctx, n: Node, x):
    c = {v: ctx.const(v, n.type.dtype) for v in (6.0, 0.5, 0.0, 1.0)}
    y = relax.op.add(relax.op.divide(x[0], c[6.0]), c[0.5])
    return relax.op.minimum(relax.op.maximum(y, c[0.0]), c[1.0])


# Sigmoid-family ops are written with exp / erf / tanh so that relax's FastMathTransform can swap in
# TVM's polynomial fast_exp / fast_erf / fast_tanh, which vectorize (libm's expf does not).
def _sigmoid_of(ctx, n: Node, x):
    one = ctx.const(1.0, n.type.dtype)
    return relax.op.divide(one, relax.op.add(one, relax.op.exp(relax.op.negative(x))))


def _gelu(ctx, n: Node, x):
    c = {v: ctx.const(v, n.type.dtype) for v in (0.5, 1.0, 0.7071067811865476, 0.7978845608028654, 0.044715)}
    if n.attrs.approximate == "none":
        inner = relax.op.erf(relax.op.multiply(x[0], c[0.7071067811865476]))
    else:
        cube = relax.op.multiply(relax.op.multiply(x[0], x[0]), x[0])
        inner = relax.op.tanh(relax.op.multiply(c[0.7978845608028654],
                                                relax.op.add(x[0], relax.op.multiply(c[0.044715], cube))))
    return relax.op.multiply(relax.op.multiply(c[0.5], x[0]), relax.op.add(c[1.0], inner))


def _binary(fn: Callable) -> Callable:
    def emit(ctx, n: Node, x):
        dtype = n.type.dtype
        lhs = x[0] if ctx.graph.types[n.inputs[0]].dtype == dtype else relax.op.astype(x[0], full_dtype_name(dtype))
        if n.attrs.scalar is not None:
            return fn(lhs, ctx.const(n.attrs.scalar, dtype))
        rhs = x[1] if ctx.graph.types[n.inputs[1]].dtype == dtype else relax.op.astype(x[1], full_dtype_name(dtype))
        return fn(lhs, rhs)

    return emit


def _split(ctx, n: Node, x):
    points = np.cumsum(n.attrs.sizes[:-1]).tolist()
    block = block_of(_layout_of(n.type))  # whole channel blocks of [N, C/b, H, W, b] (block_layout)
    if block:
        points = [p // block for p in points]
    return relax.op.split(x[0], [int(p) for p in points], axis=n.attrs.dim % len(ctx.graph.types[n.inputs[0]].shape))


def _avg_pool(ctx, n: Node, x):
    a = n.attrs
    if a.divisor_override is not None:
        raise UnsupportedOpError(f"node %{n.name}: avg_pool2d with divisor_override")
    return relax.op.nn.avg_pool2d(x[0], a.kernel_size, a.stride, a.padding * 2, (1, 1), a.ceil_mode,
                                  a.count_include_pad, layout=_pool_layout(n))


def _max_pool(ctx, n: Node, x):
    """On the CPU, convopt's kernels (schedules/pool.py): over NCHW, TVM's pool gathers strided lanes behind a
    bounds test per tap; over channel blocks, its NaN-propagating max made it compute bound. Relax's max_pool2d
    for a window those refuse, or elsewhere."""
    a = n.attrs
    if ctx.own_kernels and n.type.dtype == "f32" and n.type.rank == 4:
        from tvm.s_tir.schedule import ScheduleError

        from ..schedules import pool

        in_shape = ctx.graph.types[n.inputs[0]].shape
        window = (a.kernel_size, a.stride, a.padding, a.dilation)
        try:
            if n.type.layout:
                func = pool.blocked_max_pool_prim_func(in_shape, n.type.shape, block_of(n.type.layout), *window)
            else:
                func = pool.max_pool_prim_func(in_shape, n.type.shape, *window, ctx.cpu)
        except ScheduleError:  # a window the schedule's primitives refuse: TVM's pool, slower but right
            func = None
        if func is not None:
            func = func.without_attr("global_symbol").with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)
            gvar = ctx.bb.add_func(func, "convopt_max_pool2d")  # equal shapes share one function
            stored = stored_shape(n.type.shape, n.type.layout)
            return relax.call_tir(gvar, [x[0]], relax.TensorType(stored, "float32"))
    return relax.op.nn.max_pool2d(x[0], a.kernel_size, a.stride, a.padding * 2, a.dilation, a.ceil_mode,
                                  layout=_pool_layout(n))


def _pool_layout(n: Node) -> str:
    return n.type.layout or "NCHW"


def _adaptive_avg_pool(ctx, n: Node, x):
    in_layout = ctx.graph.types[n.inputs[0]].layout
    if not in_layout or n.type.layout:
        return relax.op.nn.adaptive_avg_pool2d(x[0], n.attrs.output_size, layout=_pool_layout(n))
    # of padded blocks to one pixel in NCHW (block_layout: a squeeze-excite's pool): pooled in the blocks, then
    # [N, C/b, 1, 1, b] -> [N, C, 1, 1] without the pad lanes
    out = relax.op.nn.adaptive_avg_pool2d(x[0], n.attrs.output_size, layout=in_layout)
    batch, blocks, height, width, block = stored_shape(n.type.shape, in_layout)
    out = relax.op.reshape(relax.op.permute_dims(out, [0, 1, 4, 2, 3]), (batch, blocks * block, height, width))
    return relax.op.strided_slice(out, axes=[1], begin=[0], end=[n.type.shape[1]])


def _mean(ctx, n: Node, x):
    from ..passes.block_layout import is_spatial_mean

    in_type = ctx.graph.types[n.inputs[0]]
    if not in_type.layout or not is_spatial_mean(ctx.graph, n):  # (operands() gave a blocked 1x1 map as NCHW)
        return relax.op.mean(x[0], list(n.attrs.dims), n.attrs.keepdim)
    # a spatial mean of a blocked tensor: [N, C/b, b] without keepdim is [N, C] in NCHW order (the first C of
    # ceil(C/b) * b when the last block is padded)
    out = relax.op.mean(x[0], [2, 3], n.attrs.keepdim)
    if n.attrs.keepdim and n.type.layout:
        return out
    # an NCHW result: [N, C] or, of padded blocks, [N, C, 1, 1] (block_layout)
    batch, stored = stored_shape(in_type.shape, in_type.layout)[:2]
    channels, stored = n.type.shape[1], stored * block_of(in_type.layout)
    out = relax.op.reshape(out, (batch, stored) + (1, 1) * n.attrs.keepdim)
    return out if stored == channels else relax.op.strided_slice(out, axes=[1], begin=[0], end=[channels])


EMITTERS: dict[Op, Callable] = {
    Op.CONV2D: _conv2d,
    Op.LINEAR: lambda ctx, n, x: _linear(ctx, n, x),
    Op.BATCH_NORM: _batch_norm,
    Op.LAYER_NORM: _layer_norm,
    Op.GROUP_NORM: _group_norm,
    Op.CHANNEL_NORM: _channel_norm,
    Op.RELU: lambda ctx, n, x: relax.op.nn.relu(x[0]),
    Op.CLAMP: _clamp,
    Op.GELU: _gelu,
    Op.SILU: lambda ctx, n, x: relax.op.multiply(x[0], _sigmoid_of(ctx, n, x[0])),
    Op.SIGMOID: lambda ctx, n, x: _sigmoid_of(ctx, n, x[0]),
    Op.TANH: lambda ctx, n, x: relax.op.tanh(x[0]),
    Op.RSQRT: lambda ctx, n, x: relax.op.rsqrt(x[0]),
    Op.HARDSWISH: _hardswish,
    Op.HARDSIGMOID: _hardsigmoid,
    Op.ADD: _binary(relax.op.add),
    Op.SUB: _binary(relax.op.subtract),
    Op.MUL: _binary(relax.op.multiply),
    Op.DIV: _binary(relax.op.divide),
    Op.MAX_POOL2D: _max_pool,
    Op.AVG_POOL2D: _avg_pool,
    Op.ADAPTIVE_AVG_POOL2D: lambda ctx, n, x: _adaptive_avg_pool(ctx, n, x),
    Op.MEAN: _mean,
    Op.SOFTMAX: lambda ctx, n, x: relax.op.nn.softmax(x[0], n.attrs.dim),
    Op.RESHAPE: lambda ctx, n, x: relax.op.reshape(x[0], n.attrs.shape),
    Op.PERMUTE: lambda ctx, n, x: relax.op.permute_dims(x[0], list(n.attrs.dims)),
    # the logical axis: a blocked [N, C/b, H, W, b] concatenates its channel blocks on axis 1 too
    Op.CAT: lambda ctx, n, x: relax.op.concat(list(x), n.attrs.dim % len(n.type.shape)),
    Op.SPLIT: _split,
    Op.GETITEM: lambda ctx, n, x: relax.TupleGetItem(x[0], n.attrs.index),
    Op.IDENTITY: lambda ctx, n, x: x[0],
}


def _torch(ctx, n: Node, x):
    try:
        return emit_aten(n, x, [ctx.graph.types[i] for i in n.inputs])
    except AtenEmitError as e:
        raise UnsupportedOpError(str(e)) from None


EMITTERS[Op.TORCH] = _torch  # the ATen ops in aten_emit.ATEN_EMITTERS


def _unfused(ctx, n: Node, x):
    """A fused block where convopt's fused kernel doesn't run (a target without it): its body, node by node."""
    body = n.attrs.body
    inner_ctx = EmitContext(ctx.graph.replace(nodes=(*ctx.graph.nodes, *body)), ctx.bb)  # the body's types too
    env = dict(zip(n.inputs, x))  # NCHW: block_layout keeps a fused block's values unblocked
    for inner in body:
        env[inner.name] = ctx.bb.emit(EMITTERS[inner.op](inner_ctx, inner, [None if i is None else env[i]
                                                                            for i in inner.inputs]))
    return env[body[-1].name]


EMITTERS[Op.FUSED_BLOCK] = _unfused


def unsupported_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op not in EMITTERS or (n.op is Op.TORCH and not emits(n))]


def to_relax(graph: Graph, target: Target | None = None, records=None, *, fallback: bool = False):
    """The graph as a Relax IRModule whose ``main`` takes the graph inputs and returns a tuple of outputs.

    For a CPU ``target`` (a convopt Target), convs with constant weights call convopt's own kernels (the lowering in
    each node's attrs) with fused epilogues, and linear layers with constant weights its dense kernel
    (backends/conv_kernels.py), scheduled here: with the best tuning record of ``records``
    (tuning/apply.py ``TunedSchedules``) where it has one, else the kernel's default schedule. Fused blocks
    call convopt's fused kernels on a CPU and on CUDA (scheduled likewise on CUDA). Everything else is
    Relax's generic ops, and with ``fallback`` the nodes TVM can't compile call PyTorch
    (``fallback_nodes`` reads which).
    """
    mod, kernels = emit(graph, target, fallback=fallback)
    if not kernels:
        return mod
    from .conv_kernels import schedule_kernels

    return schedule_kernels(mod, target, kernels, records)


def fallback_nodes(mod) -> dict[str, list[str]]:
    """Fallback function -> the IR nodes it computes, in a module made by ``to_relax`` / ``emit``."""
    attrs = mod["main"].attrs or {}
    return json.loads(str(attrs[FALLBACK_ATTR])) if FALLBACK_ATTR in attrs else {}


def _refuse(missing: list[Node]) -> UnsupportedOpError:
    n = missing[0]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return UnsupportedOpError(
        f"node %{n.name} ({op_label(n)}{', module ' + n.scope if n.scope else ''}) has no TVM lowering{more}; "
        "allow the per-op PyTorch fallback (optimize(..., strict=False)) or run this model with target='torch'")


def _refuse_cpu_only(graph: Graph, target: Target) -> None:
    """Channel-blocked values come from the CPU pass block_layout and only convopt's CPU kernels read them: a
    graph prepared for a CPU target can't be compiled for another (a fused block can, when its neighbours
    exchange NCHW: CUDA has a fused kernel of its own)."""
    for n in graph.nodes:
        if block_of(_layout_of(n.type)):
            raise ValueError(f"node %{n.name} ({op_label(n)}) was prepared for a CPU target ({_layout_of(n.type)}); "
                             f"target {target.key} compiles graphs prepared for it: optimize(model, x, target=...) "
                             "with that target")


def emit(graph: Graph, target: Target | None = None, *, fallback: bool = False):
    """(the Relax IRModule of ``to_relax`` with convopt's kernels still unscheduled, PrimFunc name ->
    ``conv_kernels.KernelUse`` of those kernels): what tuning extracts its tasks from."""
    missing = unsupported_nodes(graph)
    if missing and not fallback:
        raise _refuse(missing)
    if target is not None and not target.is_cpu:
        _refuse_cpu_only(graph, target)
    bb = relax.BlockBuilder()
    params = [relax.Var(v.name, struct_info(v.type)) for v in graph.inputs]
    own_kernels = target is not None and target.is_cpu
    ctx = EmitContext(graph, bb, target if own_kernels else None)
    kernels = {}
    fallbacks: dict[str, list[str]] = {}
    # on CUDA, convopt's only kernels are the fused blocks' (every other op is TVM's)
    cuda_blocks = target is not None and target.kind == "cuda" and any(n.op is Op.FUSED_BLOCK for n in graph.nodes)
    if own_kernels or cuda_blocks:
        from . import conv_kernels
    if own_kernels:
        plans, lanes = conv_kernels.plan_epilogues(graph), target.lanes
        absorbed = {name: conv for conv, plan in plans.items() for name in plan.absorbed}
        prologues = conv_kernels.plan_prologues(graph)
        never_computed = {name for plan in prologues.values() for name in plan.absorbed}
        # weights scaled per input channel (passes/fold_channel_scale.py): emit_conv scales the packed weight
        scaled_weights = {graph.node_map[conv].inputs[1] for conv in plans
                          if conv_kernels.scaled_weight(graph, graph.node_map[conv].inputs[1])}

    def emit_node(n: Node) -> relax.Expr:
        inputs = operands(ctx, n, env)
        if n.name in missing_names:
            return _fallback(n, inputs)
        try:
            return EMITTERS[n.op](ctx, n, inputs)
        except UnsupportedOpError as e:
            if not fallback:
                raise UnsupportedOpError(f"{e}; allow the per-op PyTorch fallback (strict=False) or run this "
                                         "model with target='torch'") from None
            return _fallback(n, inputs)

    def _fallback(n: Node, inputs) -> relax.Expr:
        call = torch_fallback.emit_call(graph, n, inputs)
        fallbacks.setdefault(torch_fallback.function_name(graph, n), []).append(n.name)
        return call

    missing_names = {m.name for m in missing}
    with bb.function("main", params):
        with bb.dataflow():
            env: dict[str, relax.Expr] = {v.name: p for v, p in zip(graph.inputs, params)}
            for c in graph.constants:
                env[c.name] = relax.const(c.data.detach().cpu().contiguous().numpy())
            for n in graph.nodes:
                if own_kernels and (n.name in scaled_weights or n.name in never_computed):
                    continue
                if own_kernels and n.name in absorbed:
                    env[n.name] = env[absorbed[n.name]]  # computed by the conv kernel's epilogue
                elif own_kernels and n.op is Op.FUSED_BLOCK:
                    env[n.name] = conv_kernels.emit_fused_block(bb, graph, n, env, lanes, target.cores, kernels)
                # (a block the CUDA kernel can't run, in a graph fused for a CPU, runs its body unfused)
                elif cuda_blocks and n.op is Op.FUSED_BLOCK and conv_kernels.runs_fused_on_cuda(graph, n):
                    env[n.name] = conv_kernels.emit_fused_block_cuda(bb, graph, n, env, kernels)
                elif own_kernels and n.op is Op.CONV2D and n.name in plans:  # reads either layout
                    env[n.name] = conv_kernels.emit_conv(bb, graph, n, env, plans[n.name], lanes, kernels)
                elif own_kernels and n.name in prologues:
                    env[n.name] = conv_kernels.emit_dense(bb, graph, n, env[prologues[n.name].source], plans[n.name],
                                                          lanes, kernels, prologues[n.name])
                elif own_kernels and n.name in plans:
                    env[n.name] = conv_kernels.emit_dense(bb, graph, n, operands(ctx, n, env)[0], plans[n.name],
                                                          lanes, kernels)
                else:
                    env[n.name] = bb.emit(emit_node(n))
            out = bb.emit_output(relax.Tuple([env[o] for o in graph.outputs]))
        bb.emit_func_output(out)
    mod = bb.get()
    if fallbacks:
        mod["main"] = mod["main"].with_attr(FALLBACK_ATTR, json.dumps(fallbacks))
    return mod, kernels
