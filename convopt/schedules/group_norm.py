"""The CPU kernel of group norm, NCHW or in channel blocks whose groups are whole blocks (block_layout):

    mean[n, g] = 1/M sum_{c in g, p} x[n, c, p]                        M = C/G H W, p over the H W pixels
    var[n, g]  = 1/M sum_{c in g, p} (x[n, c, p] - mean[n, g])^2      (two passes, no cancellation)
    out[n, c, p] = (x[n, c, p] - mean[n, g]) rsqrt(var[n, g] + eps) gamma[c] + beta[c]

The kernel reads the pixels flattened: NCHW as [N, C, H W], blocks as [N, C/b, H W, b] (free reshapes). Each
sum runs in two steps so that the cores share it even when N x G is 1 (MobileViT-v2's and PoolFormer's
GroupNorm(1), a layer norm over C x H x W): a vector of partial sums per channel (or block), parallel over
the channels (NCHW: lanes over pixels j w + l, w the widest divisor of H W up to a vector; blocked: the
block's lanes), then each group's few vectors, serially; the output is parallel over the channels and
vectorized. TVM's own group norm reduced each group in one serial loop (5.4x its memory bound in
mobilevitv2_050, 7.6% of the model, on the Intel AVX-512 host).
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

PARTIAL_SUM, PARTIAL_SQUARES, GROUP_SUM, GROUP_SQUARES = "gn_partial_sum", "gn_partial_squares", "gn_sum", "gn_squares"
MEAN, RSTD, OUT = "gn_mean", "gn_rstd", "gn_out"


def partial_width(pixels: int, lanes: int) -> int:
    """Lanes of an NCHW channel's partial sums: the widest divisor of its pixel count up to a vector."""
    return next(w for w in range(min(lanes, pixels), 0, -1) if pixels % w == 0)


def _compute(x, gamma, beta, groups: int, eps: float, lanes: int):
    blocked = len(x.shape) == 4  # [N, C/b, P, b], else [N, C, P]
    n_, units, pixels = (int(d) for d in x.shape[:3])
    block = int(x.shape[3]) if blocked else 1
    width = block if blocked else partial_width(pixels, lanes)
    per_group = units // groups
    count = float(per_group * block * pixels)
    rj = te.reduce_axis((0, pixels if blocked else pixels // width), name="rj")

    def at(n, u, j, l):  # the partial sums' element j of lane l
        return x[n, u, j, l] if blocked else x[n, u, j * width + l]

    def partial_sums(name, term):
        return te.compute((n_, units, width), lambda n, u, l: te.sum(term(n, u, rj, l), axis=rj), name=name)

    def group_sums(name, partial):
        ru, rl = te.reduce_axis((0, per_group), name="ru"), te.reduce_axis((0, width), name="rl")
        return te.compute((n_, groups), lambda n, g: te.sum(partial[n, g * per_group + ru, rl], axis=[ru, rl]),
                          name=name)

    total = group_sums(GROUP_SUM, partial_sums(PARTIAL_SUM, at))
    mean = te.compute((n_, groups), lambda n, g: total[n, g] / count, name=MEAN)

    def squared_deviation(n, u, j, l):
        d = at(n, u, j, l) - mean[n, u // per_group]
        return d * d

    squares = group_sums(GROUP_SQUARES, partial_sums(PARTIAL_SQUARES, squared_deviation))
    rstd = te.compute((n_, groups), lambda n, g: tirx.rsqrt(squares[n, g] / count + tirx.const(eps, "float32")),
                      name=RSTD)

    def normalized(n, u, c, v):
        g = u // per_group
        return (v - mean[n, g]) * (rstd[n, g] * gamma[c]) + beta[c]

    if blocked:
        return te.compute(tuple(int(d) for d in x.shape),
                          lambda n, u, p, l: normalized(n, u, u * block + l, x[n, u, p, l]), name=OUT)
    return te.compute(tuple(int(d) for d in x.shape), lambda n, u, p: normalized(n, u, u, x[n, u, p]), name=OUT)


def _schedule(sch: "tvm.s_tir.Schedule", lanes: int) -> None:
    for name in (PARTIAL_SUM, PARTIAL_SQUARES):
        block = sch.get_sblock(name)
        n, u, l, j = sch.get_loops(block)
        sch.reorder(n, u, j, l)  # a vector of partial sums, added down the pixels
        sch.parallel(sch.fuse(n, u))
        sch.vectorize(l)
        sch.decompose_reduction(block, j)
    out = sch.get_sblock(OUT)
    n, u, p, *lane = sch.get_loops(out)
    sch.parallel(sch.fuse(n, u))
    if lane:
        sch.vectorize(lane[0])
    else:  # the pixels in vectors of the widest divisor up to a vector's lanes
        sch.vectorize(sch.split(p, [None, partial_width(int(sch.get(p).extent), lanes)])[1])


def group_norm_prim_func(shape: tuple[int, ...], groups: int, eps: float, lanes: int) -> tirx.PrimFunc:
    """The scheduled kernel for input ``shape``: [N, C, P] (NCHW, P = H W) or [N, C/b, P, b] with ``groups``
    dividing the blocks: (x, gamma[C], beta[C]) -> out of ``shape``."""
    x = te.placeholder(shape, "float32", name="x")
    channels = shape[1] * shape[3] if len(shape) == 4 else shape[1]
    if shape[1] % groups:
        raise ValueError(f"group norm of {groups} groups over {shape}: groups must divide the channel units")
    gamma = te.placeholder((channels,), "float32", name="gamma")
    beta = te.placeholder((channels,), "float32", name="beta")
    y = _compute(x, gamma, beta, groups, eps, lanes)
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, y]))
    _schedule(sch, lanes)
    return sch.mod["main"]
