"""Im2win convolution (Lu et al., "Im2win: An Efficient Convolution Paradigm on GPU", 2022, and
"Im2win: Memory Efficient Convolution On SIMD Architectures", 2023).

Math. With xpad the zero-padded input ([N, C, Hp, Wp], Hp = H + 2ph, Wp = W + 2pw), the window
buffer interleaves the KH input rows that an output row reads, width outer, kh inner:

    win[n, c, oh, w*KH + kh] = xpad[n, c, oh*SH + kh*DH, w]              (stage 1: repack)

so the window of output (oh, ow) is the contiguous run of ((KW-1)*DW + 1)*KH floats starting at
(ow*SW)*KH (every DW-th group of KH when dilated), and the conv is a dot product along it:

    acc[n, o, oh, ow] = sum_{c, kw, kh} Wt[o, c, kw, kh] * win[n, g*Cg + c, oh, (ow*SW + kw*DW)*KH + kh]
    y[n, o, oh, ow]   = act(acc + bias[o] + residual[n, o, oh, ow])       (epilogue)

(g = o // Og, Cg = C/G, Og = O/G; Wt is the weight with kw, kh swapped to follow the window.)

Workspace: 4 * N * C * OH * Wp * KH bytes (the window buffer), about KW/SW times less than
im2col's 4 * N * C * KH * KW * OH * OW; 0 when KH == 1, SH == 1 and there is no padding (then
win[n, c, oh, w] = x[n, c, oh, w] is the input itself).

Weight, prepared once: [G * ceil(Og/ob), Cg, KW, KH, ob] (the reduction in window order), ob =
one SIMD vector of output channels, Og itself when smaller; with one group the last block is
zero-padded, with several ob divides Og (``channel_block``) so a block never crosses a group.

x86 schedule (``schedule_cpu``), the register tiling of the direct lowering over the window buffer.
"oc" mode (ob >= lanes/2), 2 vector blocks x 4 outputs = 8 accumulators with AVX2:

    parallel(n, OCB/2, oh) > OW/4 > c > kw > kh > unroll(2 blocks) > unroll(4 outputs) > vectorize(ob)

per step 2 vector weight loads and 4 broadcasts, each from its window, which is read in order
(for 1x1 kernels whose weights are smaller than their input the output rows are outermost:
parallel(n, oh, OCB/2), an input row serves every channel block; where a tile's weights exceed twice the
L1, the reduction runs in passes over all rows: tiling.reduction_chunk). "ow" mode (depthwise, small
groups) vectorizes a run of up to 4 vectors of outputs instead; those read the window buffer with
stride SW*KH (gathers), so direct is much faster there. The epilogue (bias, residual, activation) is
computed per register tile (after the last pass, when chunked); the repack
is its own parallel pass over (n, c, oh). ``schedule_cuda`` is conv_spec's default schedule.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .conv_spec import (
    OUTPUT_BLOCK,
    chunked_passes,
    columns_innermost,
    loop_extent,
    optional_block,
    output_compute,
    Lowering,
    packed_weight_buffer,
    sample,
    unrolled_channels,
)
from . import prefetch, tiling

WIN_BLOCK = "im2win_win"
ACC_BLOCK = "im2win_acc"


def _ceil_div(a, b):
    return -(-a // b)


def skips_repack(spec) -> bool:
    """One input row per output row, read as it is: the window buffer is the input."""
    return spec.kernel[0] == 1 and spec.stride[0] == 1 and spec.padding == (0, 0)


def channel_block(spec, lanes: int) -> int:
    """Output channels per vector: ``lanes`` (zero-padded in the last block) when there is one group; with
    several groups a divisor of Og, so that the epilogue can still be computed per register tile."""
    ob = tiling.channel_block(spec.out_per_group, lanes)
    if spec.groups > 1 and spec.out_per_group % ob:
        ob = max(d for d in range(1, ob + 1) if spec.out_per_group % d == 0)
    return ob


def supports(spec) -> str | None:
    """Any kernel, stride, padding, dilation and groups, except a strided 1x1: there the window is a copy of
    every s-th input column that the main loop then reads as the direct kernel reads the input itself, and
    direct measured as fast or faster on every such conv (resnet50's 1x1 stride-2 downsamples: Zen 3 2.07 /
    2.09 / 2.69 ms against 2.15 / 2.11 / 2.85; Zen 4 1.30 / 1.17 / 1.03 against 1.48 / 1.17 / 1.04; Intel
    AVX-512 0.67 / 0.66 / 0.72 against 0.93 / 0.85 / 0.75; resnet18's 64->128 at 56 px 40 us against 72),
    while the cost model, which has no term for it, predicted im2win faster and chose it."""
    if spec.kernel == (1, 1) and spec.stride != (1, 1):
        return "a strided 1x1 conv: the direct kernel reads the same columns without the window copy"
    return None


def workspace_bytes(spec, lanes: int) -> int:
    if skips_repack(spec):
        return 0
    wp = spec.width + 2 * spec.padding[1]
    return 4 * spec.batch * spec.in_channels * spec.out_height * wp * spec.kernel[0]


def prepare_weight(weight, spec, lanes):
    """OIHW -> [G * ceil(Og/ob), Cg, KW, KH, ob] (kw before kh, as in the window buffer); with one group, the
    blocks of tiling.output_blocks (zeros beyond the channels)."""
    g, og = spec.groups, spec.out_per_group
    ob = channel_block(spec, lanes)
    ocbg = tiling.output_blocks(1, og, lanes, spec.out_width) if g == 1 else _ceil_div(og, ob)
    w = np.asarray(weight, np.float32).reshape(g, og, spec.in_per_group, *spec.kernel)
    if ocbg * ob != og:
        w = np.concatenate([w, np.zeros((g, ocbg * ob - og, *w.shape[2:]), np.float32)], axis=1)
    w = w.reshape(g, ocbg, ob, spec.in_per_group, *spec.kernel).transpose(0, 1, 3, 5, 4, 2)
    return (np.ascontiguousarray(w.reshape(g * ocbg, spec.in_per_group, spec.kernel[1], spec.kernel[0], ob)),)


def compute(data, packed, *, bias=None, residual=None, spec, activation="none", lanes=8, out_block=None):
    n_, c_, h, w = (int(v) for v in data.shape)
    kh_, kw_ = spec.kernel
    sh, sw = spec.stride
    dh, dw = spec.dilation
    ph, pw = spec.padding
    cg, og = spec.in_per_group, spec.out_per_group
    oh_, ow_ = spec.out_height, spec.out_width
    wp = w + 2 * pw
    ob = int(packed.shape[-1])
    ocbg = _ceil_div(og, ob)
    if spec.groups == 1:
        ocbg = max(ocbg, int(packed.shape[0]))  # zero blocks beyond the channels (tiling.output_blocks)
    if spec.groups > 1 and og % ob:
        raise ValueError(f"with {spec.groups} groups the channel block {ob} must divide {og}")
    expected = (spec.groups * ocbg, cg, kw_, kh_, ob)
    if tuple(int(v) for v in packed.shape) != expected:
        raise ValueError(f"packed weight shape {tuple(packed.shape)}, expected {expected}")

    if skips_repack(spec):
        win = data
    else:
        def repack(n, c, y, j):
            r, x = j % kh_, j // kh_
            yy, xx = y * sh + r * dh - ph, x - pw
            inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
            return tirx.if_then_else(inside, data[n, c, yy, xx], tirx.const(0.0, "float32"))

        win = te.compute((n_, c_, oh_, wp * kh_), repack, name=WIN_BLOCK, attrs={"im2win_kh": kh_})

    rc = te.reduce_axis((0, cg), name="rc")
    rs = te.reduce_axis((0, kw_), name="rs")
    rr = te.reduce_axis((0, kh_), name="rr")

    def chan(b, c):
        return c if spec.groups == 1 else b // ocbg * cg + c

    acc = te.compute(
        (n_, spec.groups * ocbg, oh_, ow_, ob),
        lambda n, b, y, x, lane: te.sum(
            packed[b, rc, rs, rr, lane] * win[n, chan(b, rc), y, (x * sw + rs * dw) * kh_ + rr], axis=[rc, rs, rr]),
        name=ACC_BLOCK,
    )

    # one group, or ob | Og (channel_block): block o // ob holds channel o
    return output_compute(spec.output_shape, lambda n, o, y, x: acc[n, o // ob, y, x, o % ob], bias=bias,
                          residual=residual, activation=activation, out_block=out_block)



def schedule_cpu(sch, func_name, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    lanes = target.lanes
    acc = sch.get_sblock(ACC_BLOCK, func_name)
    out = sch.get_sblock(OUTPUT_BLOCK, func_name)

    win = optional_block(sch, WIN_BLOCK, func_name)
    if win is not None:
        kh_ = int(sch.get(win).annotations["im2win_kh"])
        n, c, y, j = sch.get_loops(win)
        sch.parallel(sch.fuse(n, c, y))
        if kh_ > 1:
            sch.unroll(sch.split(j, [None, kh_])[1])

    weight = packed_weight_buffer(sch, acc)
    n, b, y, x, lane, rc, rs, rr = sch.get_loops(acc)
    ocb, ow_, ob = loop_extent(sch, b), loop_extent(sch, x), loop_extent(sch, lane)
    chunked = False
    if tiling.vectorizes_channels(ob, lanes):
        # the direct kernel's register tile: 2 vector blocks x 4 outputs with AVX2, x 8 with AVX-512
        ot, _ = tiling.channel_tile(ocb, ob, lanes, ow_)
        wt = tiling.column_tile(ow_, ocb, ob, lanes)
        # tunable like the direct kernel's tile (the epilogue's choices below hold for every candidate)
        bo, bi = sch.split(b, [None, sample(sch, tiling.channel_tiles(ocb, ot), ot)])
        xo, xi = sch.split(x, [None, sample(sch, tiling.column_tiles(ow_, wt, lanes), wt)])
        chunk = tiling.reduction_chunk(
            loop_extent(sch, rc), ot * ob * loop_extent(sch, rs) * loop_extent(sch, rr), target.caches["L1d"],
            layer_weights=loop_extent(sch, rc) * loop_extent(sch, rs) * loop_extent(sch, rr) * ocb * ob,
            l2_bytes=target.caches.get("L2"),
            rows=tiling.pass_rows(loop_extent(sch, n) * -(-ocb // ot), loop_extent(sch, y), target.cores))
        one_by_one = loop_extent(sch, rs) * loop_extent(sch, rr) == 1
        rows_first = one_by_one and tiling.rows_outermost(
            weights=ocb * ob * loop_extent(sch, rc), inputs=loop_extent(sch, rc) * loop_extent(sch, y) * ow_,
            in_passes=bool(chunk))
        chunked = bool(chunk) and not rows_first
        unrolled = []  # a 1x1's channels unrolled by a few, inside the taps (tiling.reduction_unroll)
        if one_by_one and not chunked:
            rc, inner = unrolled_channels(sch, rc)
            unrolled = [inner]
        if rows_first:
            # 1x1 with weights smaller than the input: output rows outermost, so an input row serves
            # every channel block from cache (tiling.rows_outermost)
            sch.reorder(n, y, bo, xo, rc, rs, rr, *unrolled, bi, xi, lane)
            sch.parallel(sch.fuse(n, y, bo))
        elif chunk:
            # the tile's weights in passes over the input channels that fit the L1, each pass over every output
            # row (tiling.reduction_chunk), the next pass's weights prefetched (prefetch.py)
            rco, rci = sch.split(rc, [None, chunk])
            if one_by_one:
                rci, inner = unrolled_channels(sch, rci)
                unrolled = [inner]
            y = chunked_passes(sch, n, bo, y, rco, [xo, rci, rs, rr, *unrolled, bi, xi, lane], target.cores)
        else:
            sch.reorder(n, bo, y, xo, rc, rs, rr, *unrolled, bi, xi, lane)
            sch.parallel(sch.fuse(n, bo, y))
        sch.unroll(bi)
        sch.unroll(xi)
        sch.vectorize(lane)
    else:
        # depthwise / small groups: a run of outputs per vector, the channel block unrolled
        if ob == 1:
            wt = ow_ if ow_ <= 4 * lanes else tiling.pick_tile(ow_, 4 * lanes)
        else:  # small groups: the direct kernel's rule and accumulator layout (measured the same way)
            wt = tiling.group_row_tile(ow_, lanes)
            columns_innermost(sch, acc)
        xo, xi = sch.split(x, [None, wt])
        sch.reorder(n, b, y, xo, rc, rs, rr, lane, xi)
        sch.parallel(sch.fuse(n, b, y))
        sch.unroll(lane)
        if ow_ % wt == 0:
            sch.vectorize(xi)
        else:
            sch.unroll(xi)
    sch.decompose_reduction(acc, sch.get_loops(acc)[1] if chunked else rc)
    if chunked:  # (after decompose_reduction, which would copy the mark to the initialisation's loops)
        prefetch.annotate(sch, y, weight, bi, rci, rs, rr, lane, *unrolled)

    blocked = len(sch.get(out).iter_vars) == 5
    if blocked and int(sch.get(out).iter_vars[-1].dom.extent) != ob:
        # a blocked output whose blocks straddle the accumulator's (groups of 24 channels: 8-channel blocks,
        # 16-lane output, RegNetX/Y): its own parallel pass, as the direct kernel does; compute-at can't invert
        # that index map (TVM failed to vectorize the epilogue: regnetx_016 and regnety_016 did not compile)
        en, eo, ey, _, lane_out = sch.get_loops(out)
        sch.parallel(sch.fuse(en, eo, ey))
        sch.vectorize(lane_out)
        return
    if chunked:  # the epilogue once the last pass is done, over the task's rows
        sch.reverse_compute_at(out, sch.get_loops(acc)[0], preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(out)[-1])
        return
    # the epilogue per register tile; the tile-sized accumulator stays on the stack
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    last = sch.get_loops(out)[-1]  # NCHW: output columns of the tile; blocked: the channel block
    if blocked or (1 < loop_extent(sch, last) <= 8 * lanes and ow_ % wt == 0):
        sch.vectorize(last)


def blocked_io(spec, lanes: int) -> bool:
    """Vectorized over a block of output channels (the direct kernel's rule)."""
    return tiling.vectorizes_channels(tiling.channel_block(spec.out_per_group, lanes), lanes)


LOWERING = Lowering("im2win", supports, workspace_bytes, prepare_weight, compute, schedule_cpu, blocked_io=blocked_io,
                    weight_channel_axis=1)  # [OCB, Cg, KW, KH, ob]
