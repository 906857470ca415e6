"""im2col + GEMM convolution.

Math (per batch n and group g; Cg = C/G input and Og = O/G output channels per group,
K = Cg*KH*KW, P = OH*OW, k = (c, kh, kw) = c*KH*KW + kh*KW + kw, p = (oh, ow) = oh*OW + ow):

    xpad[n, c, y, x] = x[n, c, y - ph, x - pw] inside, 0 in the border    (stage 0: pad, if any)
    col[n, g, k, p]  = xpad[n, g*Cg + c, oh*SH + kh*DH, ow*SW + kw*DW]     (stage 1: unroll)
    acc[n, o, p]     = sum_k Wm[o, k] * col[n, o // Og, k, p]              (stage 2: GEMM)
    y[n, o, oh, ow]  = act(acc[n, o, p] + bias[o] + residual[n, o, oh, ow])   (epilogue)

with Wm = weight.reshape(O, K). For a 1x1, stride-1, unpadded conv col is the input itself
(col[n, g, c, p] = x[n, g*Cg + c, p]): both stages are skipped.

Workspace: 4 * N * C * KH * KW * OH * OW bytes (col, [N, G, K, P]) plus, with padding,
4 * N * C * (H + 2ph) * (W + 2pw) (xpad: unrolling from it is branch-free; testing the border per
element instead made the unroll of the 7x7 s2 stem 3x and the whole conv 1.2x slower); 0 for 1x1
stride-1 unpadded convs.
The GEMM's accumulator is one register tile per thread.

Weight, prepared once: Wm packed as [O/m, K, m] (= [G, Og/m, K, m]): the m output channels of a
register tile interleaved per k; m divides Og.

x86 schedule (``schedule_cpu``), see ``plan``: the GEMM's register tile is 8 vector accumulators.
Mode "p" (P a multiple of the vector): vectorized along p, the NCHW-contiguous axis of both col
and the output, with 4 output channels x 2 vectors of pixels (broadcast weights, vector col rows):

    parallel(n, P/16) > O/4 > K > unroll(4) > unroll(2) > vectorize(8)    then the tile's epilogue

(with O/4 in the parallel loop too where the pixel tiles alone would leave a core idle: a 4x4 map is one tile)

Mode "o" (e.g. 14x14 outputs: P not a multiple of 8, Og is): vectorized along output channels, the
accumulator laid out [N, O/8, P, 8], 2 vectors of channels x up to 4 pixels (vector weights,
broadcast col). The epilogue (bias, residual, activation, NCHW store) is computed per register
tile (``reverse_compute_at``). Padding and unrolling are parallel passes over (n, c, y) and
(n, g, c, kh, kw) rows. ``schedule_cuda`` is the default one-thread-per-output schedule of conv_spec.
"""

from __future__ import annotations

import numpy as np
from tvm import te

from . import tiling

from .conv_spec import (
    OUTPUT_BLOCK,
    optional_block,
    output_compute,
    pad_input,
    Lowering,
)

PAD_BLOCK = "im2col_pad"
COL_BLOCK = "im2col_col"
GEMM_BLOCK = "im2col_gemm"


def _geometry(spec) -> tuple[int, int]:
    """(K, P): the GEMM's reduction length and its number of pixels."""
    kh, kw = spec.kernel
    return spec.in_per_group * kh * kw, spec.out_height * spec.out_width


def skips_unroll(spec) -> bool:
    """1x1, stride 1, no padding: the col matrix of group g is the input's channels of g, as they are."""
    return spec.kernel == (1, 1) and spec.stride == (1, 1) and spec.padding == (0, 0)


def plan(spec, lanes: int) -> tuple[str, int, int, int]:
    """(mode, m, tile_o, tile_p): the GEMM's register tile, 8 accumulators with AVX2 (measured best:
    4 x 32 and 2 x 56 pixels spill, 8 x 8 is load bound), 16 with AVX-512.

    "p" (pixels vectorized; when P % lanes == 0, or when no vector of lanes, lanes/2 or lanes/4 (>= 4)
    divides Og): m = tile_o output channels (m | Og) x tile_p pixels, a multiple of lanes dividing P (one
    vector and a guarded tail when P isn't a multiple of lanes). "o" (output channels vectorized): m =
    the widest of those vectors dividing Og, tile_o vectors x tile_p pixels (a divisor of P)."""
    return tiling.gemm_tile(spec.out_height * spec.out_width, spec.out_per_group, spec.out_channels, lanes)


def supports(spec) -> str | None:
    return None  # any kernel, stride, padding, dilation and groups


def workspace_bytes(spec, lanes: int) -> int:
    """The col matrix, and the zero-padded input when there is padding."""
    if skips_unroll(spec):
        return 0
    k, p = _geometry(spec)
    (ph, pw), n = spec.padding, spec.batch
    pad = n * spec.in_channels * (spec.height + 2 * ph) * (spec.width + 2 * pw) if ph or pw else 0
    return 4 * (n * spec.groups * k * p + pad)


def prepare_weight(weight, spec, lanes):
    """OIHW -> [O/m, K, m]: the GEMM's A matrix with the m channels of a register tile interleaved."""
    _, m, _, _ = plan(spec, lanes)
    w = np.asarray(weight, np.float32).reshape(spec.out_channels // m, m, -1)
    return (np.ascontiguousarray(w.transpose(0, 2, 1)),)


def compute(data, packed, *, bias=None, residual=None, spec, activation="none", lanes=8, out_block=None):
    n_ = int(data.shape[0])
    kh_, kw_ = spec.kernel
    sh, sw = spec.stride
    dh, dw = spec.dilation
    cg, og, ow_ = spec.in_per_group, spec.out_per_group, spec.out_width
    k_, p_ = _geometry(spec)
    mode, m, to, tp = plan(spec, lanes)
    if tuple(int(v) for v in packed.shape) != (spec.out_channels // m, k_, m):
        raise ValueError(f"packed weight shape {tuple(packed.shape)}, expected {(spec.out_channels // m, k_, m)}")

    if skips_unroll(spec):
        def col_at(n, g, k, p):
            return data[n, g * cg + k, p // ow_, p % ow_]
    else:
        xpad = pad_input(data, spec, PAD_BLOCK)

        def unroll(n, g, k, p):
            c, r, s = k // (kh_ * kw_), k // kw_ % kh_, k % kw_
            return xpad[n, g * cg + c, p // ow_ * sh + r * dh, p % ow_ * sw + s * dw]

        col = te.compute((n_, spec.groups, k_, p_), unroll, name=COL_BLOCK, attrs={"im2col_window": [kh_, kw_, ow_]})

        def col_at(n, g, k, p):
            return col[n, g, k, p]

    k = te.reduce_axis((0, k_), name="k")
    attrs = {"im2col_tile": [mode, to, tp]}
    if mode == "p":
        acc = te.compute(
            (n_, spec.out_channels, p_),
            lambda n, o, p: te.sum(packed[o // m, k, o % m] * col_at(n, o // og, k, p), axis=k),
            name=GEMM_BLOCK, attrs=attrs)
        value = lambda n, o, y, x: acc[n, o, y * ow_ + x]
    else:
        acc = te.compute(
            (n_, spec.out_channels // m, p_, m),
            lambda n, b, p, lane: te.sum(packed[b, k, lane] * col_at(n, b * m // og, k, p), axis=k),
            name=GEMM_BLOCK, attrs=attrs)
        value = lambda n, o, y, x: acc[n, o // m, y * ow_ + x, o % m]
    return output_compute(spec.output_shape, value, bias=bias, residual=residual, activation=activation,
                          out_block=out_block)


def _parallel(sch, n, pixel_tiles, channel_tiles, cores: int):
    """Parallel over (batch, pixel tiles), and over the output-channel tiles too where the pixel tiles alone
    leave a core idle (tiling.spreads_over_channels); returns the register tile's loop (the epilogue's place)."""
    tasks = int(sch.get(n).extent) * int(sch.get(pixel_tiles).extent)
    if tiling.spreads_over_channels(tasks, cores):
        tile = sch.fuse(n, pixel_tiles, channel_tiles)
        sch.parallel(tile)
        return tile
    sch.parallel(sch.fuse(n, pixel_tiles))
    return channel_tiles


def schedule_cpu(sch, func_name, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    lanes = target.lanes
    gemm = sch.get_sblock(GEMM_BLOCK, func_name)
    out = sch.get_sblock(OUTPUT_BLOCK, func_name)
    mode, to, tp = sch.get(gemm).annotations["im2col_tile"]
    mode, to, tp = str(mode), int(to), int(tp)

    pad = optional_block(sch, PAD_BLOCK, func_name)
    if pad is not None:
        sch.parallel(sch.fuse(*sch.get_loops(pad)[:3]))
    col = optional_block(sch, COL_BLOCK, func_name)
    if col is not None:
        # one parallel task per col row (c, kh, kw), copied output row by output row
        kh_, kw_, ow_ = (int(v) for v in sch.get(col).annotations["im2col_window"])
        sch.transform_block_layout(col, lambda n, g, k, p: (n, g, k // (kh_ * kw_), k // kw_ % kh_, k % kw_,
                                                            p // ow_, p % ow_))
        sch.parallel(sch.fuse(*sch.get_loops(col)[:5]))
        # each col row's output columns copied a vector at a time (their input columns are a stride apart):
        # scalar copies made a 14->14 3x3 at 32x32 take 2x the GEMM's time (tiling.col_copy_vector)
        vector = tiling.col_copy_vector(ow_, lanes)
        if vector:
            sch.vectorize(sch.split(sch.get_loops(col)[-1], [None, vector])[1])

    if mode == "p":
        n, o, p, k = sch.get_loops(gemm)
        oo, oi = sch.split(o, [None, to])
        po, pi = sch.split(p, [None, tp])
        pv, pl = sch.split(pi, [None, min(lanes, tp)])
        sch.reorder(n, po, oo, k, oi, pv, pl)
        tile = _parallel(sch, n, po, oo, target.cores)
        sch.unroll(oi)
        sch.unroll(pv)
        sch.vectorize(pl)
    else:
        n, b, p, lane, k = sch.get_loops(gemm)
        bo, bi = sch.split(b, [None, to])
        po, pi = sch.split(p, [None, tp])
        sch.reorder(n, po, bo, k, bi, pi, lane)
        tile = _parallel(sch, n, po, bo, target.cores)
        sch.unroll(bi)
        sch.unroll(pi)
        sch.vectorize(lane)
    sch.decompose_reduction(gemm, k)

    # the epilogue per register tile: iterated over (n, o, p) the tile is a rectangle of it
    ow_ = int(sch.get(out).iter_vars[3].dom.extent)
    blocked = len(sch.get(out).iter_vars) == 5
    if blocked:
        sch.transform_block_layout(out, lambda n, cb, y, x, lane: (n, cb, y * ow_ + x, lane))
    else:
        sch.transform_block_layout(out, lambda n, o, y, x: (n, o, y * ow_ + x))
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    last = sch.get_loops(out)[-1]
    if blocked:  # the channel block: whole vectors
        sch.vectorize(last)
    elif mode == "p":
        sch.vectorize(sch.split(last, [None, min(lanes, tp)])[1])
    elif tp & (tp - 1) == 0:  # (odd-length vectors become shuffles: leave those to LLVM)
        sch.vectorize(last)


# Not blocked_io: its column matrix and "p"-mode GEMM run over pixels, so blocked tensors become gathers
LOWERING = Lowering("im2col", supports, workspace_bytes, prepare_weight, compute, schedule_cpu)
