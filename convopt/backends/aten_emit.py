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
    constant_pad_nd / pad    nn.pad, "constant" and "reflect" modes (negative pads, which crop, and
                             "replicate" are refused)
    slice.Tensor             strided_slice (end clamped to the dimension)
    chunk                    split where the captured pieces end, a tuple (read by getitem nodes)
    leaky_relu               nn.leakyrelu
    contiguous / clone       the value itself (Relax values have no strides)
"""

from __future__ import annotations

import itertools
from typing import Callable

from tvm import relax

from ..ir.graph import Node
from ..ir.ops import Ref


class AtenEmitError(NotImplementedError):
    """An opaque op whose arguments this emitter doesn't cover (the message names the node)."""


def _resize(method: str, n: Node, x, align_corners: bool = False):
    if len(n.type.shape) != 4:
        raise AtenEmitError(f"node %{n.name}: {n.attrs.target} of a rank-{len(n.type.shape)} tensor")
    if method == "nearest_neighbor":
        mode, rounding = "asymmetric", "floor"
    else:
        mode, rounding = ("align_corners" if align_corners else "half_pixel"), ""
    return relax.op.image.resize2d(x, size=n.type.shape[2:], layout="NCHW", method=method,
                                   coordinate_transformation_mode=mode, rounding_method=rounding)


def _upsample_nearest(n: Node, args):
    return _resize("nearest_neighbor", n, args[0])


def _upsample_bilinear(n: Node, args):
    # upsample_bilinear2d.vec(input, output_size, align_corners, scale_factors); .default has the scales last
    return _resize("linear", n, args[0], align_corners=bool(args[2]))


def _pad_widths(n: Node, pad) -> list[int]:
    """ATen's pad list (last dimension first, (before, after) pairs) as Relax's pad_width (every axis)."""
    rank = len(n.type.shape)
    pad = [int(p) for p in pad]
    if any(p < 0 for p in pad):
        raise AtenEmitError(f"node %{n.name}: negative padding (a crop)")
    widths = [0] * (2 * rank)
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        widths[2 * axis], widths[2 * axis + 1] = pad[2 * i], pad[2 * i + 1]
    return widths


# (Relax's "edge" mode gave wrong values for "replicate": relative error 0.46 against eager; refused)
_PAD_MODES = {"constant": "constant", "reflect": "reflect"}


def _pad(n: Node, args):
    # pad.default(input, pad, mode="constant", value=None); constant_pad_nd.default(input, pad, value=0)
    if n.attrs.target.startswith("aten.constant_pad_nd"):
        mode, value = "constant", args[2] if len(args) > 2 else 0.0
    else:
        mode, value = (args[2] if len(args) > 2 else "constant"), (args[3] if len(args) > 3 else None)
    if mode not in _PAD_MODES:
        raise AtenEmitError(f"node %{n.name}: padding mode {mode!r}")
    return relax.op.nn.pad(args[0], _pad_widths(n, args[1]), pad_mode=_PAD_MODES[mode],
                           pad_value=float(value or 0.0))


def _slice(n: Node, args):
    # slice.Tensor(input, dim=0, start=None, end=None, step=1)
    def arg(i, default):
        return args[i] if len(args) > i and args[i] is not None else default

    dim = int(arg(1, 0)) % len(n.type.shape)
    return relax.op.strided_slice(args[0], axes=[dim], begin=[int(arg(2, 0))], end=[min(int(arg(3, 2**31 - 1)),
                                  2**31 - 1)], strides=[int(arg(4, 1))])


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
    "aten.constant_pad_nd.default": _pad,
    "aten.pad.default": _pad,
    "aten.slice.Tensor": _slice,
    "aten.leaky_relu.default": lambda n, args: relax.op.nn.leakyrelu(args[0], float(args[1] if len(args) > 1
                                                                                    else 0.01)),
    "aten.contiguous.default": lambda n, args: args[0],
    "aten.clone.default": lambda n, args: args[0],
}


def emits(n: Node) -> bool:
    return n.attrs.target in ATEN_EMITTERS


def emit_aten(n: Node, inputs: list):
    """The Relax expression of opaque node ``n`` whose tensor inputs are ``inputs``."""

    def subst(v):
        if isinstance(v, Ref):
            return inputs[v.index]
        if isinstance(v, tuple):
            return tuple(subst(e) for e in v)
        return v

    return ATEN_EMITTERS[n.attrs.target](n, [subst(a) for a in n.attrs.args])
