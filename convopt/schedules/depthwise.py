"""Depthwise convolution vectorized over channels: the input is re-laid out as channel blocks (NCHW[L]c) by
its padding stage, so every tap of the kernel is one vector FMA over L channels.

The direct kernel vectorizes a depthwise conv over output columns, which leaves most lanes idle on the small
maps of a network's last stages (a 7-wide row in 16 lanes) and needs a whole vector row of outputs per
accumulator; here the lanes are channels, whatever the map size. With L = the SIMD lanes and CB = ceil(C / L):

    blocked[n, cb, yp, xp, l] = x[n, cb L + l, yp - ph, xp - pw]     (zero outside the input, past C)
    acc[n, cb, y, x, l]       = sum_{ry, rx} blocked[n, cb, y sh + ry dh, x sw + rx dw, l] * Wp[cb, ry, rx, l]
    out[n, o, y, x]           = act(acc[n, o // L, y, x, o % L] + bias[o] + residual[n, o, y, x])

Wp is the weight [C, 1, KH, KW] packed once as [CB, KH, KW, L]. Schedule (x86): the conv runs
parallel(n, cb, y) > x tile > ry > rx > unroll(x in tile) > vectorize(l), a register tile of
``tiling.accumulators`` output columns, and the epilogue (bias, residual, activation, the store) per tile,
unrolled over it when the output is blocked, so the accumulators stay in registers (as a loop it read them
back from the stack). From NCHW the padding stage gathers each vector from L channel planes: one parallel pass
over (n, cb, yp), before the conv (a band at a time was no faster there).

Between blocked neighbours (passes/block_layout.py) the input arrives in the same blocks and nothing is
staged: the padding stage is inlined into the taps, each load zero where it falls outside the input, with rx
unrolled (and ry too when a tile is the whole row), so that for each unrolled tap and column the column's test
is a constant and folds away; what remains is a test of the row, the same for the whole tile. The parallel loop
is over (n, cb, band of ``tiling.band_rows`` output rows), the output stored as [N, C/L, OH, OW, L] vectors.
Before session 47 the padding was a copy of whole vectors, a band of rows at a time into a buffer that stayed
in L1 (a whole padded copy of the map, earlier still, went to memory and back: 1.5-7x slower, and erratic on
Zen 4); without the copy, efficientnet_b0's and mobilenetv2_100's depthwise convs with SiLU run in 0.56-0.84x
the time on Zen 5 (AVX-512), 0.64-0.94x as the AVX2 build (benchmarks/results/depthwise_inline_pad_s47_znver5.md;
unrolling ry too when a row has several tiles was slower at 112 px: 24.5 against 18.9 us with ReLU).
Workspace: the padded input (NCHW input); none (blocked input).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from . import tiling
from .conv_spec import OUTPUT_BLOCK, Lowering, loop_extent, optional_block, output_compute, sample

PAD_BLOCK = "dw_blocked"
ACC_BLOCK = "dw_acc"


def supports(spec) -> str | None:
    if not (spec.groups == spec.in_channels == spec.out_channels):
        return (f"depthwise runs convs with one input and one output channel per group, not "
                f"{spec.in_channels}->{spec.out_channels} in {spec.groups} groups")
    return None


def _blocks(channels: int, lanes: int) -> int:
    return -(-channels // lanes)


def workspace_bytes(spec, lanes: int) -> int:
    """The blocked, padded input (channels rounded up to whole blocks): what NCHW input stages; blocked input
    stages a band of rows of it at a time, so this bounds it."""
    hp, wp = spec.height + 2 * spec.padding[0], spec.width + 2 * spec.padding[1]
    return 4 * spec.batch * _blocks(spec.in_channels, lanes) * lanes * hp * wp


def prepare_weight(weight, spec, lanes):
    """[C, 1, KH, KW] -> [CB, KH, KW, L], zero-padded channels."""
    c, kh, kw = spec.out_channels, *spec.kernel
    padded = np.zeros((_blocks(c, lanes) * lanes, kh, kw), np.float32)
    padded[:c] = np.asarray(weight, np.float32).reshape(c, kh, kw)
    return (np.ascontiguousarray(padded.reshape(-1, lanes, kh, kw).transpose(0, 2, 3, 1)),)


def compute(data, packed, *, bias=None, residual=None, spec, activation="none", lanes=8, out_block=None):
    blocks, kh_, kw_, width = (int(v) for v in packed.shape)
    n_, c_, h_, w_ = spec.batch, spec.in_channels, spec.height, spec.width
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation

    def padded(n, cb, y, x, lane):
        c = cb * width + lane
        inside = tirx.all(c < c_, y >= ph, y < ph + h_, x >= pw, x < pw + w_)
        return tirx.if_then_else(inside, data[n, tirx.min(c, c_ - 1), y - ph, x - pw], tirx.const(0.0, "float32"))

    blocked = te.compute((n_, blocks, h_ + 2 * ph, w_ + 2 * pw, width), padded, name=PAD_BLOCK)
    ry, rx = te.reduce_axis((0, kh_), name="ry"), te.reduce_axis((0, kw_), name="rx")
    acc = te.compute(
        (n_, blocks, spec.out_height, spec.out_width, width),
        lambda n, cb, y, x, lane: te.sum(blocked[n, cb, y * sh + ry * dh, x * sw + rx * dw, lane]
                                         * packed[cb, ry, rx, lane], axis=[ry, rx]),
        name=ACC_BLOCK)
    return output_compute(spec.output_shape, lambda n, o, y, x: acc[n, o // width, y, x, o % width], bias=bias,
                          residual=residual, activation=activation, out_block=out_block)



def schedule_cpu(sch, func_name, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    pad = optional_block(sch, PAD_BLOCK, func_name)
    blocked_input = len(sch.get(pad).reads[0].region) == 5
    if blocked_input:
        sch.compute_inline(pad)  # each tap reads the input, zero where it falls in the padding
    else:
        n, cb, yp, xp, lane = sch.get_loops(pad)
        sch.parallel(sch.fuse(n, cb, yp))
        sch.vectorize(lane)

    acc = sch.get_sblock(ACC_BLOCK, func_name)
    out = sch.get_sblock(OUTPUT_BLOCK, func_name)
    n, cb, y, x, lane, ry, rx = sch.get_loops(acc)
    width = loop_extent(sch, x)
    xt = tiling.pick_tile(width, tiling.accumulators(target.lanes))
    xo, xi = sch.split(x, [None, sample(sch, tiling.column_tiles(width, xt, target.lanes), xt)])  # tunable
    if blocked_input:
        height, tasks = loop_extent(sch, y), loop_extent(sch, n) * loop_extent(sch, cb)
        rows = tiling.band_rows(height, tasks, target.cores)
        candidates = sorted({rows} | {r for r in tiling.BAND_ROWS if r <= height})
        band, y = sch.split(y, [None, sample(sch, candidates, rows)])  # tunable
        sch.reorder(n, cb, band, y, xo, ry, rx, xi, lane)
        outer = sch.fuse(n, cb, band)
        # unrolled taps: a column's padding test is a constant once its tap and column are, and folds away
        sch.unroll(rx)
        if xt == width:  # decided on the default tile, not the sampled one (a sample must not change a branch)
            sch.unroll(ry)
    else:
        sch.reorder(n, cb, y, xo, ry, rx, xi, lane)
        outer = sch.fuse(n, cb, y)
    sch.parallel(outer)
    sch.unroll(xi)
    sch.vectorize(lane)
    sch.decompose_reduction(acc, ry)
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    if len(sch.get(out).iter_vars) == 5:  # a blocked output: whole vectors of the channel block
        *_, column, lane = sch.get_loops(out)
        sch.vectorize(lane)
        sch.unroll(column)  # the accumulators stay in registers (a loop reads them back from the stack)


LOWERING = Lowering("depthwise", supports, workspace_bytes, prepare_weight, compute, schedule_cpu,
                    blocked_io=lambda spec, lanes: True)  # its padding stage and accumulators are blocked already
