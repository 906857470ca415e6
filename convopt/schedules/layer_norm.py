"""The CPU kernels of layer norm: over the channels of each pixel (op channel_norm: timm's LayerNorm2d,
which PyTorch writes as NHWC transposes around layer_norm; passes/canonicalize.py makes that one op), and
over the innermost axes (op layer_norm, viewed as rows [M, D]):

    mean[p] = 1/C sum_c x[p, c]
    var[p]  = 1/C sum_c (x[p, c] - mean[p])^2          (two passes, as PyTorch: no cancellation)
    out[p, c] = (x[p, c] - mean[p]) rsqrt(var[p] + eps) g[c] + b[c]

channel_norm (p a pixel, c a channel): parallel over the image rows (n, y); each row's sums, statistics and
output are computed at that loop, so the row (C x W floats) is read three times from cache and once from
memory. In NCHW the row's pixels are contiguous: every stage runs vectorized over x, the sums over c outside
it. In channel blocks, NCHW[b]c ([N, C/b, H, W, b]), the lanes are channels: each pixel sums its C/b
vectors into one (vectorized over the lanes) and then the b lanes of that one. TVM's generic schedule runs
it as a reduction over a strided axis: 2.2 ms for 40 channels at 56x56 in NCHW (90x its memory bound),
and the transposes around layer_norm cost 0.27 ms; this kernel 0.04 ms.

layer_norm (p a row, c its D elements): parallel over rows; where D is a whole number of vectors the sums
are rfactored into vectors (sum_c = sum over lanes of sum_j x[p, j L + l]), else a scalar loop. dlight's CPU
reduction rule recomputed both sums for every output element of a [1, 960] classifier head, in parallel
into one shared accumulator: 0.86 ms (and a race); this kernel a few microseconds.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

SUM, SQUARES, MEAN, RSTD, OUT = "cn_sum", "cn_squares", "cn_mean", "cn_rstd", "cn_out"
LANE_SUM, LANE_SQUARES = "cn_lane_sum", "cn_lane_squares"


def _nchw(x, gamma, beta, eps: float):
    n_, c_, h_, w_ = (int(d) for d in x.shape)
    c = te.reduce_axis((0, c_), name="c")
    total = te.compute((n_, h_, w_), lambda n, y, x_: te.sum(x[n, c, y, x_], axis=c), name=SUM)
    mean = te.compute((n_, h_, w_), lambda n, y, x_: total[n, y, x_] / c_, name=MEAN)
    c2 = te.reduce_axis((0, c_), name="c2")
    squares = te.compute((n_, h_, w_), lambda n, y, x_: te.sum(
        (x[n, c2, y, x_] - mean[n, y, x_]) * (x[n, c2, y, x_] - mean[n, y, x_]), axis=c2), name=SQUARES)
    rstd = te.compute((n_, h_, w_), lambda n, y, x_: tirx.rsqrt(squares[n, y, x_] / c_ + eps), name=RSTD)
    return te.compute((n_, c_, h_, w_), lambda n, ch, y, x_: (x[n, ch, y, x_] - mean[n, y, x_]) * rstd[n, y, x_]
                      * gamma[ch] + beta[ch], name=OUT)


def _blocked(x, gamma, beta, eps: float, channels: int):
    n_, cb_, h_, w_, b_ = (int(d) for d in x.shape)
    c_ = channels  # the real channels: a padded last block's pad lanes (zeros) are left out of the statistics
    padded = c_ != cb_ * b_

    def lane_sums(name, value):  # sum over the channel blocks, one vector per pixel
        cb = te.reduce_axis((0, cb_), name="cb")
        return te.compute((n_, h_, w_, b_), lambda n, y, x_, lane: te.sum(value(n, cb, y, x_, lane), axis=cb),
                          name=name)

    def across_lanes(name, part):  # then its lanes
        lane = te.reduce_axis((0, b_), name="lane")
        return te.compute((n_, h_, w_), lambda n, y, x_: te.sum(part[n, y, x_, lane], axis=lane), name=name)

    total = across_lanes(SUM, lane_sums(LANE_SUM, lambda n, cb, y, x_, lane: x[n, cb, y, x_, lane]))
    mean = te.compute((n_, h_, w_), lambda n, y, x_: total[n, y, x_] / c_, name=MEAN)
    def deviation(n, cb, y, x_, lane):  # x - mean; 0 in a pad lane (a select: it vectorizes, if_then_else doesn't)
        d = x[n, cb, y, x_, lane] - mean[n, y, x_]
        return tirx.Select(cb * b_ + lane < c_, d, tirx.const(0.0, x.dtype)) if padded else d

    squares = across_lanes(SQUARES, lane_sums(LANE_SQUARES, lambda n, cb, y, x_, lane: (
        deviation(n, cb, y, x_, lane) * deviation(n, cb, y, x_, lane))))
    rstd = te.compute((n_, h_, w_), lambda n, y, x_: tirx.rsqrt(squares[n, y, x_] / c_ + eps), name=RSTD)
    return te.compute((n_, cb_, h_, w_, b_), lambda n, cb, y, x_, lane: (
        x[n, cb, y, x_, lane] - mean[n, y, x_]) * rstd[n, y, x_] * gamma[cb * b_ + lane] + beta[cb * b_ + lane],
        name=OUT)


def _schedule(sch: tvm.s_tir.Schedule, blocked: bool) -> None:
    out = sch.get_sblock(OUT)
    if blocked:
        n, cb, y, x, lane = sch.get_loops(out)
        sch.reorder(n, y, cb, x, lane)
    else:
        n, c, y, x = sch.get_loops(out)
        sch.reorder(n, y, c, x)
        lane = x
    row = sch.fuse(n, y)
    sch.parallel(row)
    sch.vectorize(lane)
    # producers at the row, each after its consumers are placed: rstd, squares, mean, sum
    stages = [RSTD] + ([SQUARES, LANE_SQUARES] if blocked else [SQUARES]) + [MEAN] + (
        [SUM, LANE_SUM] if blocked else [SUM])
    for name in stages:
        sch.compute_at(sch.get_sblock(name), row, preserve_unit_loops=True)
    for name in (LANE_SUM, LANE_SQUARES) if blocked else (SUM, SQUARES):
        block = sch.get_sblock(name)
        *_, inner, reduce = sch.get_loops(block)  # (x, lane, cb) in blocks, (x, c) in NCHW: the sum outside
        sch.reorder(reduce, inner)
        sch.vectorize(inner)
        sch.decompose_reduction(block, reduce)
    if not blocked:
        for name in (MEAN, RSTD):
            sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])


def channel_prim_func(shape: tuple[int, ...], eps: float, channels: int | None = None) -> tirx.PrimFunc:
    """The scheduled kernel for an input of ``shape``: [N, C, H, W], or [N, ceil(C/b), H, W, b] (channel blocks,
    ``channels`` = C when the last block is padded); arguments x, gamma, beta (one per stored channel: a
    padded block's get zeros, so its pad lanes stay zero), out (x's shape)."""
    blocked = len(shape) == 5
    stored = shape[1] * shape[4] if blocked else shape[1]
    x = te.placeholder(shape, name="x")
    gamma, beta = te.placeholder((stored,), name="gamma"), te.placeholder((stored,), name="beta")
    if blocked:
        out = _blocked(x, gamma, beta, float(eps), channels or stored)
    else:
        out = _nchw(x, gamma, beta, float(eps))
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, out]))
    _schedule(sch, blocked)
    return sch.mod["main"]


def _rows(x, gamma, beta, eps: float, lanes: int):
    m_, d_ = (int(v) for v in x.shape)
    vectors = d_ % lanes == 0 and d_ >= 2 * lanes

    def sums(name, value):
        if not vectors:
            d = te.reduce_axis((0, d_), name="d")
            return te.compute((m_,), lambda m: te.sum(value(m, d), axis=d), name=name)
        j = te.reduce_axis((0, d_ // lanes), name="j")
        part = te.compute((m_, lanes), lambda m, lane: te.sum(value(m, j * lanes + lane), axis=j), name=f"{name}_lanes")
        lane = te.reduce_axis((0, lanes), name="lane")
        return te.compute((m_,), lambda m: te.sum(part[m, lane], axis=lane), name=name)

    total = sums(SUM, lambda m, d: x[m, d])
    mean = te.compute((m_,), lambda m: total[m] / d_, name=MEAN)
    squares = sums(SQUARES, lambda m, d: (x[m, d] - mean[m]) * (x[m, d] - mean[m]))
    rstd = te.compute((m_,), lambda m: tirx.rsqrt(squares[m] / d_ + eps), name=RSTD)
    out = te.compute((m_, d_), lambda m, d: (x[m, d] - mean[m]) * rstd[m] * gamma[d] + beta[d], name=OUT)
    return out, vectors


def row_prim_func(rows: int, size: int, eps: float, lanes: int) -> tirx.PrimFunc:
    """The scheduled kernel normalizing each of ``rows`` rows of ``size`` elements: arguments x [rows, size],
    gamma [size], beta [size], out [rows, size]."""
    x = te.placeholder((rows, size), name="x")
    gamma, beta = te.placeholder((size,), name="gamma"), te.placeholder((size,), name="beta")
    out, vectors = _rows(x, gamma, beta, float(eps), lanes)
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, out]))
    row, column = sch.get_loops(sch.get_sblock(OUT))
    sch.parallel(row)
    sch.vectorize(sch.split(column, [None, lanes])[1] if size % lanes == 0 else column)
    stages = [RSTD, SQUARES] + ([f"{SQUARES}_lanes"] if vectors else []) + [MEAN, SUM] + (
        [f"{SUM}_lanes"] if vectors else [])
    for name in stages:
        sch.compute_at(sch.get_sblock(name), row, preserve_unit_loops=True)
    if vectors:
        for name in (f"{SUM}_lanes", f"{SQUARES}_lanes"):
            block = sch.get_sblock(name)
            *_, lane, step = sch.get_loops(block)
            sch.reorder(step, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, step)
    return sch.mod["main"]
