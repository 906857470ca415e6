"""FFT convolution as matrix products (FlashFFTConv-style, Fu et al. 2023): every DFT is a GEMM.

Math, per axis (rows: H, P, S, D, K -> OH; columns alike). Output y reads input t = yS - P + aD,
a < K, so t lies in [-P, hi] with hi = (OH-1)S + D(K-1) - P; only He = min(H, hi+1) input rows
matter. On a circular grid of length L holding x unpadded at [0, He), the taps alias nothing onto
kept outputs when L >= Lmin = He + P (t < 0 lands on [L-P, L), past the data; hi < L): no padded
copy is made, the padding is the phase u = yS - P of the inverse DFT's rows. The real input needs
only the half spectrum k < K = L//2 + 1, each k with a cos and a sin part (the sin part of k = 0
and k = L/2 is zero), kept split: index k (cos) and K + k (sin). Rows: L = Lmin; columns: L odd
with J = 2K = L + 1 a multiple of 8 (the vector axis of the GEMMs). With j = b*Kw + kw, r = a*Kh + kh:

    A[n,c,h,j]     = sum_w x[n,c,h,w] FW[w,j]        FW[w, b, kw] = (cos, sin)(2 pi kw w / Lw)
    P[n,c,r,j]     = sum_h FH[r,h] A[n,c,h,j]        FH[a, kh, h] = (cos, sin)(2 pi kh h / Lh)

P's four parts at (kh, kw) are CC, CS, SC, SS and X(+-kh, kw) = (CC -+ SS) - i (SC +- CS). The
kernel's spectrum, conjugated for correlation, dilation spreading the taps, computed once in numpy:
W(kh, kw) = sum_yx w[o,c,y,x] e^{2 pi i (kh y DH / Lh + kw x DW / Lw)}; W0, W1, W2, W3 = Re, Im of
W(kh), W(-kh). The products Y(+-kh) = sum_c W X, summed with their mirror +-kh as the real inverse
needs, are one signed 4x4 real matrix per frequency pair, q = 2a + b, ^ = xor:

    T[n,o,a,kh,j]  = sum_c (-1)^a Q[q] CC + (-1)^(a+b) Q[q^1] CS + Q[q^2] SC + (-1)^b Q[q^3] SS
    Q[o,c,:,kh,kw] = (W0 + W2, W1 + W3, W1 - W3, W2 - W0)

The inverse, rows then columns, evaluates only the kept outputs (u = yS - P, v = xS - P):

    V[n,o,y,j]     = sum_r GH[y,r] T[n,o,r,j]        GH[y, a, kh] = (cos / s(kh), sin)(2 pi kh u / Lh)
    out[n,o,y,x]   = act(sum_j V[n,o,y,j] GW[j,x] + bias[o] + residual[n,o,y,x])
                                                     GW[b, kw, x] = (2 cos, -2 sin)(2 pi kw v / Lw) / (Lh Lw)

with s(kh) = 2 for the self-conjugate rows kh = 0, Lh/2 (counted once), else 1; the same halving on
GW's cos is folded in the factor 2. Real MACs per output channel, depthwise: He We J + 2Kh He J +
2Kh OH J + OH J OWp (OWp = OW in whole vectors), 1.03M for 31x31 on 56x56 (L = 71) against 3.0M
for the direct conv, plus 4 per element of T.

Workspace (fp32 A, P, T, V): 4 ((He + 2Kh) J F + (2Kh + OH) J) bytes, F = 1 for depthwise convs
(A and P are per channel, see below), else N C. Per-channel buffers are allocated inside the
parallel loop: one copy per running thread. GEMM accumulators are register tiles on the stack.

Prepared: FW [We, J], FH [2Kh, He], Q [O, C/G, 4, Kh, Kw], GH [OH, 2, Kh], GW [J, OWp].

x86 schedule: the last GEMM runs parallel over (n, o); per (n, o) it computes T and V, and for
depthwise convs (one input channel per output channel) A and P too, so a channel's whole
pipeline stays in L2; otherwise A and P run first, parallel over (n, c). Each GEMM has an
mt x nv-vector register tile (rows x J, or y x x for the last; at most 12 accumulators, e.g. 4 x 3
vectors for J = 72) accumulated in a stack buffer and stored per tile; the last GEMM's tile goes
through the epilogue straight to the output. T: rows (kh, a, b) vectorized over kw, a and b
unrolled so the signs and Q indices fold to constants. CUDA: conv_spec.schedule_cuda_default.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from . import tiling
from .conv_spec import OUTPUT_BLOCK, Lowering, loop_extent, output_compute

ROWS_BLOCK = "fft_w"  # A
SPEC_BLOCK = "fft_hw"  # P
MUL_BLOCK = "fft_mul"  # T
INV_H_BLOCK = "ifft_h"  # V
INV_W_BLOCK = "ifft_w"  # the last GEMM, before the epilogue


def _axis(n, k, s, p, d, on, width: int | None):
    """(used input length, L, K) of one axis; with a vector ``width``: 2K a multiple of it, L = 2K - 1."""
    keff = d * (k - 1) + 1
    hi = (on - 1) * s + keff - 1 - p
    used = min(n, hi + 1)
    lmin = used + p
    if width is None:
        return used, lmin, lmin // 2 + 1
    vecs = column_vectors(lmin, width)
    return used, vecs * width - 1, vecs * width // 2


def vector_width(lanes: int) -> int:
    """Columns per vector of the spectrum grid: the SIMD width, at least 8 (an even grid on CUDA too)."""
    return max(8, lanes)


def column_vectors(length: int, width: int) -> int:
    """Vectors of ``width`` columns for a grid of at least ``length + 1`` columns (then L = 2K - 1)."""
    vecs = -(-(length + 1) // width)
    if vecs >= 6 and vecs % 2 and vecs % 3:  # a vector more for a register tile of 2 or 3 vectors
        vecs += 1
    return vecs


def geometry(spec, width: int):
    """dict: He, We (input rows/cols used), Lh, Lw, Kh, Kw, J = 2Kw, OWp (columns in vectors of ``width``)."""
    he, lh, kh = _axis(spec.height, spec.kernel[0], spec.stride[0], spec.padding[0], spec.dilation[0],
                       spec.out_height, None)
    we, lw, kw = _axis(spec.width, spec.kernel[1], spec.stride[1], spec.padding[1], spec.dilation[1],
                       spec.out_width, width)
    owp = -(-spec.out_width // width) * width
    return {"He": he, "We": we, "Lh": lh, "Lw": lw, "Kh": kh, "Kw": kw, "J": 2 * kw, "OWp": owp}


def supports(spec) -> str | None:
    return None  # any kernel, stride, padding, dilation and groups


def per_channel(spec) -> bool:
    """Depthwise (one input channel per output channel): the whole pipeline runs per channel."""
    return spec.in_per_group == 1 and spec.out_per_group == 1


def workspace_bytes(spec, lanes: int) -> int:
    """A and P for every channel (only the current channel's when per_channel), T and V per output
    channel; per-channel buffers live inside the parallel loop, one copy per running thread."""
    g = geometry(spec, vector_width(lanes))
    j, kh2 = g["J"], 2 * g["Kh"]
    forward = (g["He"] + kh2) * j * (1 if per_channel(spec) else spec.batch * spec.in_channels)
    return 4 * (forward + (kh2 + spec.out_height) * j)


def _forward(used, length, k):
    ang = 2 * np.pi * np.outer(np.arange(k), np.arange(used)) / length  # [k, t]
    return np.stack([np.cos(ang), np.sin(ang)])  # [2, K, used]


def _inverse(out, stride, pad, length, k):
    """[2, out, K]: cos (halved at self-conjugate k) and sin of 2 pi k u / L at kept rows u = yS - P."""
    kk = np.arange(k)
    ang = 2 * np.pi * np.outer(np.arange(out) * stride - pad, kk) / length
    self_conj = (kk == 0) | (2 * kk == length)
    return np.stack([np.cos(ang) * np.where(self_conj, 0.5, 1.0), np.sin(ang)])


def prepare_weight(weight, spec, lanes):
    g = geometry(spec, vector_width(lanes))
    lh, lw, kh, kw = g["Lh"], g["Lw"], g["Kh"], g["Kw"]
    w = np.asarray(weight, np.float64)
    fw = _forward(g["We"], lw, kw).transpose(2, 0, 1).reshape(g["We"], 2 * kw)
    fh = _forward(g["He"], lh, kh).reshape(2 * kh, g["He"])
    gh = _inverse(spec.out_height, spec.stride[0], spec.padding[0], lh, kh)
    gw = _inverse(spec.out_width, spec.stride[1], spec.padding[1], lw, kw)
    gw = gw * 2.0 / (lh * lw)  # m = 2 (1 on the halved self-conjugate cos; their sin is 0)
    gw[1] *= -1
    gw = np.pad(gw.transpose(0, 2, 1).reshape(2 * kw, -1), ((0, 0), (0, g["OWp"] - spec.out_width)))
    # the kernel's (conjugate) spectrum at rows kh and -kh, columns kw < Kw
    rows = np.concatenate([np.arange(kh), (-np.arange(kh)) % lh])
    eh = np.exp(2j * np.pi * np.outer(rows, np.arange(spec.kernel[0]) * spec.dilation[0]) / lh)
    ew = np.exp(2j * np.pi * np.outer(np.arange(kw), np.arange(spec.kernel[1]) * spec.dilation[1]) / lw)
    spectrum = np.einsum("fy,oiyx,gx->oifg", eh, w, ew)
    plus, minus = spectrum[:, :, :kh], spectrum[:, :, kh:]
    w0, w1, w2, w3 = plus.real, plus.imag, minus.real, minus.imag
    q = np.stack([w0 + w2, w1 + w3, w1 - w3, w2 - w0], axis=2)  # [O, C/G, 4, Kh, Kw]
    return tuple(np.ascontiguousarray(a, np.float32) for a in (fw, fh, q, gh.transpose(1, 0, 2), gw))


def compute(data, fw, fh, q, gh, gw, *, bias=None, residual=None, spec, activation="none", lanes=8):
    g = geometry(spec, vector_width(lanes))
    he, we, kh, kw, owp = g["He"], g["We"], g["Kh"], g["Kw"], g["OWp"]
    n_, c_, o_, oh = spec.batch, spec.in_channels, spec.out_channels, spec.out_height
    ipg, opg = spec.in_per_group, spec.out_per_group

    # the column axis j = b * Kw + kw stays flat in every buffer: GEMM tiles along it are rectangles
    jj = 2 * kw
    rw = te.reduce_axis((0, we), name="w")
    a_ = te.compute((n_, c_, he, jj), lambda n, c, h, j: te.sum(data[n, c, h, rw] * fw[rw, j], axis=rw),
                    name=ROWS_BLOCK)
    rh = te.reduce_axis((0, he), name="h")
    p_ = te.compute((n_, c_, 2 * kh, jj), lambda n, c, r, j: te.sum(fh[r, rh] * a_[n, c, rh, j], axis=rh),
                    name=SPEC_BLOCK)

    def product(n, o, a, k, j, c):
        ch = (o // opg) * ipg + c
        b, f = j // kw, j % kw
        sa = tirx.Cast("float32", 1 - 2 * a)
        sb = tirx.Cast("float32", 1 - 2 * b)
        return (sa * q[o, c, 2 * a + b, k, f] * p_[n, ch, k, f]
                + sa * sb * q[o, c, 2 * a + 1 - b, k, f] * p_[n, ch, k, kw + f]
                + q[o, c, 2 - 2 * a + b, k, f] * p_[n, ch, kh + k, f]
                + sb * q[o, c, 3 - 2 * a - b, k, f] * p_[n, ch, kh + k, kw + f])

    if ipg == 1:
        t_ = te.compute((n_, o_, 2, kh, jj), lambda n, o, a, k, j: product(n, o, a, k, j, 0), name=MUL_BLOCK)
    else:
        rc = te.reduce_axis((0, ipg), name="c")
        t_ = te.compute((n_, o_, 2, kh, jj), lambda n, o, a, k, j: te.sum(product(n, o, a, k, j, rc), axis=rc),
                        name=MUL_BLOCK)
    ra = te.reduce_axis((0, 2), name="a")
    rk = te.reduce_axis((0, kh), name="kh")
    v_ = te.compute((n_, o_, oh, jj), lambda n, o, y, j: te.sum(gh[y, ra, rk] * t_[n, o, ra, rk, j], axis=[ra, rk]),
                    name=INV_H_BLOCK)
    rj = te.reduce_axis((0, jj), name="j")
    e_ = te.compute((n_, o_, oh, owp), lambda n, o, y, x: te.sum(v_[n, o, y, rj] * gw[rj, x], axis=rj),
                    name=INV_W_BLOCK)
    return output_compute(spec.output_shape, lambda n, o, y, x: e_[n, o, y, x], bias=bias, residual=residual,
                          activation=activation)


# ----------------------------------------------------------------------------- x86 schedule


def _gemm(sch, block, outer, m, n, reduce, lanes, *, consumer=None, consumer_cols=None, rows_parallel=False):
    """Register-tile a GEMM block: ``outer`` loops (fused, parallel, with the row tiles too when
    ``rows_parallel``; none when the block is computed inside a parallel loop already), m rows x n
    (vector) columns, ``reduce`` loops in between.

    With ``consumer`` (an elementwise block reading ``consumer_cols`` of the n columns) that block is
    computed per tile instead of writing the tile back. Returns the parallel loop, if any."""
    width = math.gcd(loop_extent(sch, n), vector_width(lanes))  # J and OWp are whole vectors
    mt, nv = tiling.fft_gemm_tile(loop_extent(sch, m), loop_extent(sch, n) // width, lanes)
    lanes = width
    mo, mi = sch.split(m, [None, mt])
    no, ni = sch.split(n, [None, nv * lanes])
    ni_o, ni_i = sch.split(ni, [None, lanes])
    if len(reduce) > 1:
        reduce = [sch.fuse(*reduce)]
    sch.reorder(*outer, mo, no, *reduce, mi, ni_o, ni_i)
    par = None
    if outer:
        loops = [*outer, mo] if rows_parallel else outer
        par = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        sch.parallel(par)
    sch.unroll(mi)
    sch.unroll(ni_o)
    sch.vectorize(ni_i)
    # the tile's accumulator: a stack buffer (the consumer's tile, or a cache written back per tile)
    store = consumer if consumer is not None else sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(store, no, preserve_unit_loops=True)
    sch.decompose_reduction(block, reduce[0])
    last = sch.get_loops(store)[-1]
    if loop_extent(sch, last) % lanes == 0 and (consumer_cols or 0) % (nv * lanes) == 0:
        sch.vectorize(last)
    return par


def _schedule_mul(sch, blk) -> None:
    """T: (kh, a, b) rows of Kw, a and b unrolled (signs and Q indices fold), vectorized over kw."""
    loops = sch.get_loops(blk)
    red = loops[-1:] if len(sch.get(blk).iter_vars) == 6 else []  # the sum over a group's channels
    a, k, j = loops[-3 - len(red):len(loops) - len(red)]
    b, f = sch.split(j, [2, None])
    sch.reorder(k, a, b, *red, f)
    sch.unroll(a)
    sch.unroll(b)
    sch.vectorize(f)
    if red:
        sch.decompose_reduction(blk, red[0])


def schedule_cpu(sch, func_name, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    lanes = target.lanes
    get = lambda name: sch.get_sblock(name, func_name)
    out = get(OUTPUT_BLOCK)
    mul = get(MUL_BLOCK)
    dims = lambda blk: [int(iv.dom.extent) for iv in sch.get(blk).iter_vars]
    # depthwise (one input channel per output channel): the whole pipeline runs per channel, its
    # buffers per thread (L2-resident); otherwise the forward transforms run first, over all channels
    per_channel = dims(get(SPEC_BLOCK))[1] == dims(mul)[1] and len(dims(mul)) == 5

    blk = get(INV_W_BLOCK)
    n, o, y, x, j = sch.get_loops(blk)
    par = _gemm(sch, blk, [n, o], y, x, [j], lanes, consumer=out,
                consumer_cols=loop_extent(sch, sch.get_loops(out)[-1]))

    blk = get(INV_H_BLOCK)
    sch.compute_at(blk, par, preserve_unit_loops=True)
    y, j, a, k = sch.get_loops(blk)[-4:]
    _gemm(sch, blk, [], y, j, [a, k], lanes)

    sch.compute_at(mul, par, preserve_unit_loops=True)
    _schedule_mul(sch, mul)

    blk = get(SPEC_BLOCK)
    if per_channel:
        sch.compute_at(blk, par, preserve_unit_loops=True)
    n, c, r, j, h = sch.get_loops(blk)[-5:]
    _gemm(sch, blk, [] if per_channel else [n, c], r, j, [h], lanes, rows_parallel=True)

    blk = get(ROWS_BLOCK)
    if per_channel:
        sch.compute_at(blk, par, preserve_unit_loops=True)
    n, c, h, j, w = sch.get_loops(blk)[-5:]
    _gemm(sch, blk, [] if per_channel else [n, c], h, j, [w], lanes, rows_parallel=True)


# Its output stage is scheduled inside the inverse transform's GEMM over output columns: it writes NCHW only
LOWERING = Lowering("fft", supports, workspace_bytes, prepare_weight, compute, schedule_cpu,
                    writes_blocked=False)
