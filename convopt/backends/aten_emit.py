"""Relax emitters for ATen ops that the IR keeps opaque (``Op.TORCH`` nodes): the ones real CNNs use between
their convs that no pass needs to see. One row per ATen target; a target not in the table has no TVM
lowering (relax_emit.unsupported_nodes names it).

Each emitter gets the node's arguments in schema order, its tensor inputs as Relax expressions (``args``),
and returns the Relax expression of the node's value. They read and write NCHW (block_layout never blocks
an opaque op's operands). Output shapes come from the node's type (captured from the example inputs), so
``output_size`` and ``scale_factors`` need no recomputation:

    upsample_nearest2d       resize2d, nearest, "asymmetric" + floor: src = floor(dst * in / out)
    upsample_bilinear2d      resize2d, linear, "align_corners" or "half_pixel" (clamped at the edges
                             like PyTorch's); the antialiased variant has no row
    constant_pad_nd / pad    nn.pad, "constant" and "reflect" modes; negative pads crop (strided_slice)
                             in constant mode ("replicate" is refused)
    slice.Tensor             strided_slice (end clamped to the dimension)
    chunk                    split where the captured pieces end, a tuple (read by getitem nodes)
    select / narrow          strided_slice (select then drops the axis)
    expand                   broadcast_to the captured shape
    pixel_(un)shuffle        reshape, permute, reshape
    adaptive_max_pool2d      per output cell, max and argmax of its window (PyTorch's bounds: floor(i H / oh)
                             to ceil((i + 1) H / oh)); the indices as PyTorch's, flat over H x W
    unfold                   take of the windows' indices [n, size] along the dim, the window axis moved
                             last (HaloNet's blocked attention)
    leaky_relu, elu, selu, softplus, mish, prelu   elementwise formulas (softplus linear above its
                             threshold, like PyTorch's)
    gt/lt/ge/le.Scalar, where.self   comparisons to a bool mask and the select
    sum.dim_IntList, .default   sum over the dims, or over everything
    expand_as, reshape_as    broadcast_to / reshape to the captured shape
    matmul, stack, unbind    Relax's matmul, stack, and split + squeeze (a tuple)
    clamp_min/max, maximum/minimum, square, pow.Tensor_Scalar, conv1d, conv3d   elementwise; Relax's conv1d
                             (ECA attention) and conv3d (LambdaNetworks' position embedding)
    scaled_dot_product_attention   softmax(q k^T * scale [+ mask | causal]) v (hybrid CNNs' attention
                             blocks; dropout and grouped heads are refused)
    flip                     Relax's flip, one axis at a time
    linalg_vector_norm       ord 1, 2 and inf over the dims (F.normalize in XCA attention)
    to.dtype / to.device / _to_copy   astype to the node's dtype (one device: the module's)
    abs, neg, exp, log, sqrt, sin, cos, floor, ceil, round, sign, erf, reciprocal   elementwise
    contiguous / clone       the value itself (Relax values have no strides)
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable

import numpy as np
from tvm import relax

from ..ir.graph import Node
from ..ir.layout import block_of
from ..ir.ops import Ref, pad_arguments
from ..ir.types import full_dtype_name


class AtenEmitError(NotImplementedError):
    """An opaque op whose arguments this emitter doesn't cover (the message names the node)."""


def _resize(method: str, n: Node, x, align_corners: bool = False):
    """Relax's resize2d; a blocked tensor (block_layout) in its own layout, NCHW<b>c, which Relax knows."""
    if len(n.type.shape) != 4:
        raise AtenEmitError(f"node %{n.name}: {n.attrs.target} of a rank-{len(n.type.shape)} tensor")
    if method == "nearest_neighbor":
        mode, rounding = "asymmetric", "floor"
    else:
        mode, rounding = ("align_corners" if align_corners else "half_pixel"), ""
    return relax.op.image.resize2d(x, size=n.type.shape[2:], layout=n.type.layout or "NCHW", method=method,
                                   coordinate_transformation_mode=mode, rounding_method=rounding)


def _upsample_nearest(n: Node, args):
    return _resize("nearest_neighbor", n, args[0])


def _upsample_bilinear(n: Node, args):
    # upsample_bilinear2d.vec(input, output_size, align_corners, scale_factors); .default has the scales last
    return _resize("linear", n, args[0], align_corners=bool(args[2]))


def _pad_widths(n: Node, pad) -> list[int]:
    """ATen's pad list (last dimension first, (before, after) pairs) as Relax's pad_width (every axis);
    negative entries (crops) stay negative."""
    rank = len(n.type.shape)
    pad = [int(p) for p in pad]
    widths = [0] * (2 * rank)
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        widths[2 * axis], widths[2 * axis + 1] = pad[2 * i], pad[2 * i + 1]
    return widths


def _crop(x, widths: list[int], shape: tuple[int, ...]):
    """``x`` (of ``shape``) with the negative entries of ``widths`` cut off its edges."""
    axes = [a for a in range(len(shape)) if widths[2 * a] < 0 or widths[2 * a + 1] < 0]
    if not axes:
        return x
    begin = [max(-widths[2 * a], 0) for a in axes]
    end = [shape[a] - max(-widths[2 * a + 1], 0) for a in axes]
    return relax.op.strided_slice(x, axes=axes, begin=begin, end=end)


# (Relax's "edge" mode gave wrong values for "replicate": relative error 0.46 against eager; refused)
_PAD_MODES = {"constant": "constant", "reflect": "reflect"}


def _pad(n: Node, args, types):
    _, mode, value = pad_arguments(n.attrs)
    if mode not in _PAD_MODES:
        raise AtenEmitError(f"node %{n.name}: padding mode {mode!r}")
    widths = _pad_widths(n, args[1])
    if block_of(getattr(types[0], "layout", "")):  # [N, C/b, H, W, b] (block_layout: H and W padded only)
        widths += [0, 0]
    if any(w < 0 for w in widths) and mode != "constant":
        raise AtenEmitError(f"node %{n.name}: negative padding (a crop) in mode {mode!r}")
    x = _crop(args[0], widths, types[0].shape)  # a negative pad crops first, as in PyTorch
    if all(w <= 0 for w in widths):
        return x
    return relax.op.nn.pad(x, [max(w, 0) for w in widths], pad_mode=_PAD_MODES[mode], pad_value=value)


def _slice(n: Node, args, types):
    # slice.Tensor(input, dim=0, start=None, end=None, step=1)
    dim = int(_arg(args, 1, 0)) % len(n.type.shape)
    begin, end = int(_arg(args, 2, 0)), min(int(_arg(args, 3, 2**31 - 1)), 2**31 - 1)
    block = block_of(getattr(types[0], "layout", ""))
    if block and dim == 1:  # whole channel blocks of [N, C/b, H, W, b] (block_layout: begin % b == 0, step 1)
        begin, end = begin // block, -(-min(end, types[0].shape[1]) // block)
    return relax.op.strided_slice(args[0], axes=[dim], begin=[begin], end=[end], strides=[int(_arg(args, 4, 1))])


def _index(value, size: int) -> int:
    return int(value) % size if int(value) < 0 else int(value)


def _select(n: Node, args, types):
    dim = int(args[1]) % len(types[0].shape)
    index = _index(args[2], types[0].shape[dim])
    picked = relax.op.strided_slice(args[0], axes=[dim], begin=[index], end=[index + 1])
    return relax.op.squeeze(picked, axis=[dim])


def _narrow(n: Node, args, types):
    dim = int(args[1]) % len(types[0].shape)
    start = _index(args[2], types[0].shape[dim])
    return relax.op.strided_slice(args[0], axes=[dim], begin=[start], end=[start + int(args[3])])


def _pixel_shuffle(n: Node, args, types):
    r = int(args[1])
    b, c, h, w = types[0].shape
    x = relax.op.reshape(args[0], (b, c // (r * r), r, r, h, w))
    return relax.op.reshape(relax.op.permute_dims(x, [0, 1, 4, 2, 5, 3]), n.type.shape)


def _pixel_unshuffle(n: Node, args, types):
    r = int(args[1])
    b, c, h, w = types[0].shape
    x = relax.op.reshape(args[0], (b, c, h // r, r, w // r, r))
    return relax.op.reshape(relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4]), n.type.shape)


def _unfold(n: Node, args, types):
    # unfold(input, dimension, size, step): windows of ``size`` every ``step`` along the dim, as a new last axis
    rank = len(types[0].shape)
    dim, size, step = int(args[1]) % max(rank, 1), int(args[2]), int(args[3])
    windows = n.type.shape[dim]
    indices = np.arange(windows, dtype=np.int64)[:, None] * step + np.arange(size, dtype=np.int64)[None, :]
    taken = relax.op.take(args[0], relax.const(indices), axis=dim, mode="clip")  # [..., windows, size, ...]
    order = [a for a in range(rank + 1) if a != dim + 1] + [dim + 1]
    return taken if dim + 1 == rank else relax.op.permute_dims(taken, order)


def _adaptive_max_pool2d(n: Node, args, types):
    # adaptive_max_pool2d(input, output_size) -> (values, indices): one window per output cell, cut as PyTorch
    # cuts them; the cells are few where CNNs use it (global or row/column pools: BAT, CoordAttention)
    *lead, h, w = types[0].shape
    oh, ow = n.type.elements[0].shape[-2:]
    rows = [(i * h // oh, -(-(i + 1) * h // oh)) for i in range(oh)]
    cols = [(j * w // ow, -(-(j + 1) * w // ow)) for j in range(ow)]
    values, indices = [], []
    for (top, bottom), (left, right) in itertools.product(rows, cols):
        window = relax.op.strided_slice(args[0], axes=[len(lead), len(lead) + 1], begin=[top, left],
                                        end=[bottom, right])
        flat = relax.op.reshape(window, (*lead, (bottom - top) * (right - left)))
        values.append(relax.op.max(flat, axis=-1))
        local = relax.op.argmax(flat, axis=-1)  # the first of equal maxima, as PyTorch's kernel
        width = relax.const(right - left, "int64")
        row = relax.op.add(relax.op.floor_divide(local, width), relax.const(top, "int64"))
        col = relax.op.add(relax.op.floor_mod(local, width), relax.const(left, "int64"))
        indices.append(relax.op.add(relax.op.multiply(row, relax.const(w, "int64")), col))
    shape = (*lead, oh, ow)
    return relax.Tuple([relax.op.reshape(relax.op.stack(values, axis=-1), shape),
                        relax.op.reshape(relax.op.astype(relax.op.stack(indices, axis=-1), "int64"), shape)])


def _const(value: float, dtype: str = "float32"):
    return relax.const(float(value), dtype)


def _softplus_of(x, beta: float = 1.0, threshold: float = 20.0):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (PyTorch's rule: no overflow).

    Relax's own op, one expression: built of where/exp/log it referred to x three times, and a chain of them
    fused into one function (mish(mish(x)): each level a tanh of a softplus) made TVM's compile run for over
    ten minutes."""
    return relax.op.nn.softplus(x, beta, threshold)


def _elu_of(x, alpha: float, scale: float = 1.0, input_scale: float = 1.0):
    negative = relax.op.multiply(_const(alpha), relax.op.subtract(
        relax.op.exp(relax.op.multiply(x, _const(input_scale))), _const(1.0)))
    out = relax.op.where(relax.op.greater(x, _const(0.0)), x, negative)
    return relax.op.multiply(out, _const(scale)) if scale != 1.0 else out


def _arg(args, i: int, default):
    return args[i] if len(args) > i and args[i] is not None else default


def _prelu(n: Node, args, types):
    rank = len(types[0].shape)
    weight = relax.op.reshape(args[1], (1, -1) + (1,) * (rank - 2)) if rank > 1 else args[1]
    return relax.op.where(relax.op.greater(args[0], _const(0.0)), args[0], relax.op.multiply(weight, args[0]))


def _compare(fn):
    return lambda n, args, types: fn(args[0], _const(args[1], full_dtype_name(types[0].dtype)))


def _unbind(n: Node, args, types):
    dim = int(_arg(args, 1, 0)) % len(types[0].shape)
    size = types[0].shape[dim]
    pieces = relax.op.split(args[0], list(range(1, size)), axis=dim) if size > 1 else relax.Tuple([args[0]])
    return relax.Tuple([relax.op.squeeze(relax.TupleGetItem(pieces, i), axis=[dim]) for i in range(size)])


def _conv1d(n: Node, args, types):
    # conv1d.default(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
    def one(v, default):
        v = _arg(args, v, default)
        return int(v[0]) if isinstance(v, (tuple, list)) else int(v)

    out = relax.op.nn.conv1d(args[0], args[1], strides=one(3, 1), padding=one(4, 0), dilation=one(5, 1),
                             groups=int(_arg(args, 6, 1)))
    bias = _arg(args, 2, None)
    return relax.op.add(out, relax.op.reshape(bias, (1, -1, 1))) if bias is not None else out


def _conv3d(n: Node, args, types):
    # conv3d.default(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): LambdaNetworks'
    # relative position embedding (timm's lambda_resnet) is a conv3d over (1, H, W) of the values
    def three(v, default):
        v = _arg(args, v, default)
        return [int(e) for e in v] * (3 if len(v) == 1 else 1) if isinstance(v, (tuple, list)) else [int(v)] * 3

    out = relax.op.nn.conv3d(args[0], args[1], strides=three(3, 1), padding=three(4, 0), dilation=three(5, 1),
                             groups=int(_arg(args, 6, 1)))
    bias = _arg(args, 2, None)
    return relax.op.add(out, relax.op.reshape(bias, (1, -1, 1, 1, 1))) if bias is not None else out


def _attention(n: Node, args, types):
    """scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0, is_causal=False, scale=None,
    enable_gqa=False) as softmax(q k^T * scale [+ mask]) v with Relax's matmul and softmax."""
    mask, dropout, causal = _arg(args, 3, None), float(_arg(args, 4, 0.0)), bool(_arg(args, 5, False))
    if dropout or bool(_arg(args, 7, False)) or types[0].shape[:-2] != types[1].shape[:-2]:
        raise AtenEmitError(f"node %{n.name}: attention with dropout or grouped (GQA) heads")
    rank = len(types[0].shape)
    scale = _arg(args, 6, None)
    scale = float(scale) if scale is not None else types[0].shape[-1] ** -0.5
    key_t = relax.op.permute_dims(args[1], list(range(rank - 2)) + [rank - 1, rank - 2])
    scores = relax.op.multiply(relax.op.matmul(args[0], key_t), _const(scale))
    if causal:
        lq, lk = types[0].shape[-2], types[1].shape[-2]
        keep = np.tril(np.ones((lq, lk), dtype=bool))  # PyTorch's is_causal: the top-left triangle
        scores = relax.op.where(relax.const(keep), scores, _const(float("-inf")))
    if mask is not None:
        if types[3].dtype == "bool":
            scores = relax.op.where(mask, scores, _const(float("-inf")))
        else:
            scores = relax.op.add(scores, mask)
    return relax.op.matmul(relax.op.nn.softmax(scores, axis=-1), args[2])


def _vector_norm(n: Node, args, types):
    """linalg_vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None) for ord 1, 2 and inf."""
    order, dims, keepdim = float(_arg(args, 1, 2.0)), _arg(args, 2, None), bool(_arg(args, 3, False))
    # logical dims: those of a blocked [N, C/b, H, W, b] tensor's H and W are the same axes (block_layout)
    axes = None if dims is None else [int(d) % len(types[0].shape) for d in dims]
    if axes is None and block_of(getattr(types[0], "layout", "")):
        raise AtenEmitError(f"node %{n.name}: vector norm of all of a blocked tensor")
    if _arg(args, 4, None) is not None:
        raise AtenEmitError(f"node %{n.name}: vector norm with a dtype")
    if order == 2.0:
        return relax.op.sqrt(relax.op.sum(relax.op.multiply(args[0], args[0]), axes, keepdim))
    if order == 1.0:
        return relax.op.sum(relax.op.abs(args[0]), axes, keepdim)
    if order == float("inf"):
        return relax.op.max(relax.op.abs(args[0]), axes, keepdim)
    raise AtenEmitError(f"node %{n.name}: vector norm of order {order}")


def _chunk(n: Node, args):
    # chunk.default(input, chunks, dim=0)
    dim = int(args[2]) if len(args) > 2 else 0
    pieces = [piece.shape[dim] for piece in n.type.elements]  # as captured: PyTorch's own split
    return relax.op.split(args[0], list(itertools.accumulate(pieces[:-1])), axis=dim)


ATEN_EMITTERS: dict[str, Callable] = {
    "aten.chunk.default": _chunk,
    "aten.upsample_nearest2d.vec": _upsample_nearest,
    "aten.upsample_nearest2d.default": _upsample_nearest,
    "aten.upsample_bilinear2d.vec": _upsample_bilinear,
    "aten.upsample_bilinear2d.default": _upsample_bilinear,
    "aten.leaky_relu.default": lambda n, args: relax.op.nn.leakyrelu(args[0], float(_arg(args, 1, 0.01))),
    "aten.elu.default": lambda n, args: _elu_of(args[0], float(_arg(args, 1, 1.0)), float(_arg(args, 2, 1.0)),
                                                float(_arg(args, 3, 1.0))),
    "aten.selu.default": lambda n, args: _elu_of(args[0], 1.6732632423543772, 1.0507009873554805),
    "aten.softplus.default": lambda n, args: _softplus_of(args[0], float(_arg(args, 1, 1.0)),
                                                          float(_arg(args, 2, 20.0))),
    "aten.mish.default": lambda n, args: relax.op.multiply(args[0], relax.op.tanh(_softplus_of(args[0]))),
    "aten.expand.default": lambda n, args: relax.op.broadcast_to(args[0], n.type.shape),
    "aten.where.self": lambda n, args: relax.op.where(args[0], args[1], args[2]),
    "aten.expand_as.default": lambda n, args: relax.op.broadcast_to(args[0], n.type.shape),
    "aten.reshape_as.default": lambda n, args: relax.op.reshape(args[0], n.type.shape),
    "aten.matmul.default": lambda n, args: relax.op.matmul(args[0], args[1]),
    "aten.stack.default": lambda n, args: relax.op.stack(list(args[0]), int(_arg(args, 1, 0))),
    "aten.clamp_min.default": lambda n, args: relax.op.maximum(args[0], _const(args[1])),
    "aten.clamp_max.default": lambda n, args: relax.op.minimum(args[0], _const(args[1])),
    "aten.maximum.default": lambda n, args: relax.op.maximum(args[0], args[1]),
    "aten.minimum.default": lambda n, args: relax.op.minimum(args[0], args[1]),
    "aten.square.default": lambda n, args: relax.op.multiply(args[0], args[0]),
    "aten.pow.Tensor_Scalar": lambda n, args: relax.op.power(args[0], _const(args[1])),
    "aten.sum.default": lambda n, args: relax.op.sum(args[0]),
    "aten.sum.dim_IntList": lambda n, args: relax.op.sum(args[0], [int(d) for d in args[1]],
                                                         bool(_arg(args, 2, False))),
    "aten.flip.default": lambda n, args: functools.reduce(lambda x, d: relax.op.flip(x, int(d)), args[1], args[0]),
    "aten.contiguous.default": lambda n, args: args[0],
    "aten.clone.default": lambda n, args: args[0],
}


def _cast(n: Node, args):
    """A dtype cast (to.dtype, to.device, _to_copy): the output dtype is the node's, a device is the module's."""
    return relax.op.astype(args[0], full_dtype_name(n.type.dtype))


ATEN_EMITTERS.update({target: _cast for target in
                      ("aten.to.dtype", "aten.to.device", "aten.to.dtype_layout", "aten._to_copy.default")})


# elementwise ATen ops with a Relax op of the same meaning
_UNARY = {"abs": relax.op.abs, "neg": relax.op.negative, "exp": relax.op.exp, "log": relax.op.log,
          "sqrt": relax.op.sqrt, "sin": relax.op.sin, "cos": relax.op.cos, "floor": relax.op.floor,
          "ceil": relax.op.ceil, "round": relax.op.round, "sign": relax.op.sign, "erf": relax.op.erf}
ATEN_EMITTERS.update({f"aten.{name}.default": (lambda fn: lambda n, args: fn(args[0]))(fn)
                      for name, fn in _UNARY.items()})
ATEN_EMITTERS["aten.reciprocal.default"] = lambda n, args: relax.op.divide(_const(1.0), args[0])


# emitters that also read their inputs' types (shapes the output type doesn't give)
TYPED_EMITTERS: dict[str, Callable] = {
    "aten.select.int": _select,
    "aten.narrow.default": _narrow,
    "aten.pixel_shuffle.default": _pixel_shuffle,
    "aten.pixel_unshuffle.default": _pixel_unshuffle,
    "aten.unfold.default": _unfold,
    "aten.adaptive_max_pool2d.default": _adaptive_max_pool2d,
    "aten.prelu.default": _prelu,
    "aten.unbind.int": _unbind,
    "aten.conv1d.default": _conv1d,
    "aten.conv3d.default": _conv3d,
    "aten.scaled_dot_product_attention.default": _attention,
    "aten.slice.Tensor": _slice,
    "aten.constant_pad_nd.default": _pad,
    "aten.pad.default": _pad,
    "aten.linalg_vector_norm.default": _vector_norm,
    "aten.gt.Scalar": _compare(relax.op.greater),
    "aten.lt.Scalar": _compare(relax.op.less),
    "aten.ge.Scalar": _compare(relax.op.greater_equal),
    "aten.le.Scalar": _compare(relax.op.less_equal),
}


def emits(n: Node) -> bool:
    return n.attrs.target in ATEN_EMITTERS or n.attrs.target in TYPED_EMITTERS


def emit_aten(n: Node, inputs: list, input_types: list):
    """The Relax expression of opaque node ``n`` whose tensor inputs are ``inputs`` (of ``input_types``)."""

    def subst(v):
        if isinstance(v, Ref):
            return inputs[v.index]
        if isinstance(v, tuple):
            return tuple(subst(e) for e in v)
        return v

    args = [subst(a) for a in n.attrs.args]
    if n.attrs.target in TYPED_EMITTERS:
        return TYPED_EMITTERS[n.attrs.target](n, args, input_types)
    return ATEN_EMITTERS[n.attrs.target](n, args)
