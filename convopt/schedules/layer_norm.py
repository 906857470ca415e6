"""The CPU kernels of layer norm: over the channels of each pixel (op channel_norm: timm's LayerNorm2d,
which PyTorch writes as NHWC transposes around layer_norm; passes/canonicalize.py makes that one op), and
over the innermost axes (op layer_norm, viewed as rows [M, D]):

    mean[p] = 1/C sum_c x[p, c]
    var[p]  = 1/C sum_c (x[p, c] - mean[p])^2          (two passes, as PyTorch: no cancellation)
    out[p, c] = (x[p, c] - mean[p]) rsqrt(var[p] + eps) g[c] + b[c]

channel_norm (p a pixel, c a channel): parallel over the image rows (n, y); each row's sums, statistics and
output are computed at that loop, so the row (C x W floats) is read three times from cache and once from
memory. In NCHW the row's pixels are contiguous: every stage runs vectorized over x, the sums over c outside
it (a te schedule). In channel blocks, NCHW[b]c ([N, C/b, H, W, b]), the lanes are channels: each pixel adds
its C/b vectors into one, and ``all_lanes_sum`` adds that one's b lanes with log2(b) shuffles and adds, which
leaves the sum in every lane: the mean and 1/std come out as vectors, ready for the output's vectors (a
TVMScript kernel: te can't write a shuffle). TVM's generic schedule runs it as a reduction over a strided
axis: 2.2 ms for 40 channels at 56x56 in NCHW (90x its memory bound), and the transposes around layer_norm
cost 0.27 ms. The te schedule of the blocked kernel this replaced (session 46) summed the lanes vectorized
over 16 pixels, as 16 gathers a statistic with a chain of dependent adds: 15 us for 40 channels at 56x56
(padded to 48) with the row in L2, where the bound at the 120 GB/s of a copy is 10 us.

layer_norm (p a row, c its D elements): parallel over rows; where D is a whole number of vectors the sums
are rfactored into vectors (sum_c = sum over lanes of sum_j x[p, j L + l]), else a scalar loop. dlight's CPU
reduction rule recomputed both sums for every output element of a [1, 960] classifier head, in parallel
into one shared accumulator: 0.86 ms (and a race); this kernel a few microseconds.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx
from tvm.script import tirx as T

SUM, SQUARES, MEAN, RSTD, OUT = "cn_sum", "cn_squares", "cn_mean", "cn_rstd", "cn_out"


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


def all_lanes_sum(vector, lanes: int, step: int | None = None):
    """The sum of float32 ``vector``'s ``lanes`` lanes in every lane: log2(lanes) steps of v + v with its lanes swapped
    in pairs, then in pairs of pairs, ... (shuffles within the register, no memory); each step's v bound once
    (a Let), or the expression would hold 2^steps copies of ``vector``."""
    step = lanes // 2 if step is None else step
    if not step:
        return vector
    v = tirx.Var("lanes_sum", f"float32x{lanes}")
    return tirx.Let(v, vector, all_lanes_sum(v + tirx.Shuffle([v], [lane ^ step for lane in range(lanes)]),
                                             lanes, step // 2))


def pairwise_sum(terms: list):
    """terms[0] + terms[1] + ... as a balanced tree: log2(len) adds deep, not len."""
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return pairwise_sum(terms[:half]) + pairwise_sum(terms[half:])


def _blocked_prim_func(shape: tuple[int, ...], eps: float, channels: int) -> tirx.PrimFunc:
    n_, cb_, h_, w_, b_ = shape
    last_lanes = channels - (cb_ - 1) * b_  # real lanes of the last block
    if not 0 < last_lanes <= b_:
        raise ValueError(f"{channels} channels are not stored in {cb_} blocks of {b_}")
    f32 = "float32"

    def splat(value: float):
        return tirx.Broadcast(tirx.const(value, f32), b_)

    lanes = tirx.Ramp(0, 1, b_)
    real = lanes < tirx.Broadcast(last_lanes, b_)

    def block(x, row, px, cb):  # the vector of channel block cb at pixel (row, px)
        return tirx.BufferLoad(x, [row // h_, cb, row % h_, px, lanes])

    def squared_deviation(x, row, px, mean, cb):  # (x - mean)^2; 0 in the pad lanes of the last block
        d = block(x, row, px, cb) - mean
        return tirx.Select(real, d * d, splat(0.0)) if cb == cb_ - 1 and last_lanes < b_ else d * d

    def channel_sum(x, row, px, mean=None):  # sum over the blocks, written out: no loop-carried accumulator
        terms = [block(x, row, px, cb) if mean is None else squared_deviation(x, row, px, mean, cb)
                 for cb in range(cb_)]
        return all_lanes_sum(pairwise_sum(terms), b_) * splat(1.0 / channels)

    @T.prim_func(s_tir=False)
    def channel_norm(x: T.Buffer((n_, cb_, h_, w_, b_), f32), gamma: T.Buffer((cb_ * b_,), f32),
                     beta: T.Buffer((cb_ * b_,), f32), out: T.Buffer((n_, cb_, h_, w_, b_), f32)):
        T.func_attr({"tirx.noalias": True})
        for row in T.parallel(n_ * h_):
            for px in range(w_):
                mean = channel_sum(x, row, px)  # pad lanes are zeros: they add nothing
                rstd = splat(1.0) / T.sqrt(channel_sum(x, row, px, mean) + splat(eps))
                for cb in range(cb_):  # a padded block's gamma and beta are 0 there: its pad lanes stay 0
                    out[row // h_, cb, row % h_, px, lanes] = (block(x, row, px, cb) - mean) * rstd * \
                        gamma[T.Ramp(cb * b_, 1, b_)] + beta[T.Ramp(cb * b_, 1, b_)]

    # TVM's estimate_tir_flops can't read a Let: 8 FLOPs a stored element (its add into the sum, its deviation
    # squared and added, the output's subtract, two multiplies and add), as the te kernel's estimate nearly was
    return channel_norm.with_attr("convopt.flops", str(8 * n_ * cb_ * h_ * w_ * b_))


def _schedule(sch: tvm.s_tir.Schedule) -> None:  # NCHW
    out = sch.get_sblock(OUT)
    n, c, y, x = sch.get_loops(out)
    sch.reorder(n, y, c, x)
    row = sch.fuse(n, y)
    sch.parallel(row)
    sch.vectorize(x)
    for name in (RSTD, SQUARES, MEAN, SUM):  # producers at the row, each after its consumers are placed
        sch.compute_at(sch.get_sblock(name), row, preserve_unit_loops=True)
    for name in (SUM, SQUARES):
        block = sch.get_sblock(name)
        *_, inner, reduce = sch.get_loops(block)  # (x, c): the sum outside
        sch.reorder(reduce, inner)
        sch.vectorize(inner)
        sch.decompose_reduction(block, reduce)
    for name in (MEAN, RSTD):
        sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])


def channel_prim_func(shape: tuple[int, ...], eps: float, channels: int | None = None) -> tirx.PrimFunc:
    """The scheduled kernel for an input of ``shape``: [N, C, H, W], or [N, ceil(C/b), H, W, b] (channel blocks,
    ``channels`` = C when the last block is padded); arguments x, gamma, beta (one per stored channel: a
    padded block's get zeros, so its pad lanes stay zero), out (x's shape)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 5:
        return _blocked_prim_func(shape, float(eps), channels or shape[1] * shape[4])
    x = te.placeholder(shape, name="x")
    gamma, beta = te.placeholder((shape[1],), name="gamma"), te.placeholder((shape[1],), name="beta")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, _nchw(x, gamma, beta, float(eps))]))
    _schedule(sch)
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
