"""Direct 2-D convolution: a TE compute plus a hand-written default x86 schedule.

The input is NCHW or channel-blocked (read through ``conv_spec.nchw``), the
output NCHW or, with ``out_block``, [N, O/b, OH, OW, b] (passes/block_layout.py).
The weight is re-laid out once, at build time
(:func:`pack_weight`), into ``[G*OCBg, I/groups, KH, KW, oc_block]`` where
``OCBg = ceil((O/groups) / oc_block)`` (each group's output channels are
zero-padded to a multiple of ``oc_block``; an output-channel block never
crosses a group boundary).

Groups of half a vector's channels (RegNet's and ResNeXt's 8-channel groups with AVX-512, 4-channel ones
with AVX2) run two a vector where both sides fill whole channel blocks (``tiling.paired_groups``): the
weight is packed by :func:`pack_paired_weight` into ``[G/2, I/groups, KH, KW, lanes]`` with lane 2i + h
holding channel i of group 2j + h, the padding stage copies the input interleaved by pairs (channel c of
both groups adjacent), and each FMA broadcasts such a pair as one 64-bit value (vbroadcastsd) across the
whole vector. Blocks of half a vector, before, made two half-width FMAs for the same loads. Measured alone
(Intel AVX-512, blocked in and out, benchmarks/kernel_constant_ab.py): 368 -> 368 in 46 groups at 7 px
24.3 -> 16.8 us, 256 in 32 groups at 28 px 208 -> 147, 208 in 26 groups at 14 px 45.8 -> 27.6, stride 2
at 56 px 348 -> 294; the AVX2 code (4-channel groups) on the same host 0.59-0.76. From and to NCHW the
interleaving is a gather each way (0.94-1.5x the unpaired time): not used there.

The compute (:func:`direct_conv2d_compute`) produces up to three stages, which
become blocks of the PrimFunc with these names:

* ``dconv_pad``  -- zero-padded input (only when padding is non-zero),
* ``dconv_acc``  -- the convolution accumulated into ``[N, OCB, OH, OW, oc_block]``,
* ``dconv_out``  -- epilogue: output = act(acc + bias + residual), NCHW or blocked.

How to use it from Relax::

    bb = relax.BlockBuilder()
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit_te(direct_conv2d_compute, x, w, b,
                           out_channels=O, kernel=(3, 3), stride=(1, 1),
                           padding=(1, 1), dilation=(1, 1), groups=1,
                           oc_block=ob, activation="relu", residual=None,
                           primfunc_name_hint="conv0")
            ...
    mod = bb.get()
    gv = [g for g in mod.get_global_vars() if g.name_hint.startswith("conv0")][0]
    sch = tvm.s_tir.Schedule(mod)
    schedule_direct_conv2d(sch, gv.name_hint, target)   # works on that function
    mod = sch.mod
    ex = prefetch.compile(mod, target.tvm)   # tvm.compile with convopt's TIR passes

:func:`schedule_direct_conv2d` calls ``sch.work_on(func_name)`` and looks the
blocks up by the names above (``sch.get_sblock("dconv_acc", func_name)``).  If
``func_name`` is None the schedule must already be working on a single
function (e.g. ``Schedule(prim_func)`` or an IRModule with one PrimFunc).
:func:`find_direct_conv2d_funcs` lists every PrimFunc in an IRModule that
contains a ``dconv_acc`` block.  ``emit_te`` de-duplicates structurally equal
PrimFuncs (two identical convs share one), so schedule each name once (a
second call on the same function fails: its blocks are already split).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from . import prefetch, tiling
from .conv_spec import (BlockedView, Lowering, chunked_passes, columns_innermost, loop_extent, optional_block,
                        output_compute, packed_weight_buffer, sample, unrolled_channels)

ACC_BLOCK = "dconv_acc"
PAD_BLOCK = "dconv_pad"
OUT_BLOCK = "dconv_out"

TILED_EPILOGUE = "dconv_tiled_epilogue"  # attr of the output block: computed per register tile
# paired groups (tiling.paired_groups) unroll the kernel's column taps in TIR: their broadcasts then share one
# base address and LLVM loads each input pair once for the taps that read it (unrolled by LLVM, each tap
# computed its own sign-extended index and reloaded them): 0.84-1.0 alone (AVX-512), 0.89-1.0 (AVX2 code).
# A module constant, read at build time (benchmarks/kernel_constant_ab.py compares builds without it).
UNROLL_PAIRED_TAPS = True


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _pair(v):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _padding4(p):
    """-> (top, left, bottom, right)."""
    if isinstance(p, (list, tuple)):
        if len(p) == 1:
            p = int(p[0])
        elif len(p) == 2:
            return int(p[0]), int(p[1]), int(p[0]), int(p[1])
        elif len(p) == 4:
            return tuple(int(x) for x in p)
        else:
            raise ValueError(f"bad padding {p!r}")
    p = int(p)
    return p, p, p, p


def _ceil_div(a, b):
    return (a + b - 1) // b


# ----------------------------------------------------------------------------
# build-time helpers
# ----------------------------------------------------------------------------
def pack_weight(weight: np.ndarray, groups: int, oc_block: int, blocks: int | None = None) -> np.ndarray:
    """OIHW (I = C/groups) -> [G*ceil((O/G)/ob), I, KH, KW, ob], zero-padded per group; with one group,
    ``blocks`` (tiling.output_blocks) may ask for more blocks, of zeros."""
    weight = np.asarray(weight, dtype=np.float32)
    O, I, KH, KW = weight.shape
    G = int(groups)
    ob = int(oc_block)
    assert O % G == 0, (O, G)
    ocpg = O // G
    ocbg = _ceil_div(ocpg, ob)
    if blocks is not None:
        assert G == 1 and blocks >= ocbg, (G, blocks, ocbg)
        ocbg = blocks
    w = weight.reshape(G, ocpg, I, KH, KW)
    if ocbg * ob != ocpg:
        w = np.concatenate([w, np.zeros((G, ocbg * ob - ocpg, I, KH, KW), np.float32)], axis=1)
    w = w.reshape(G, ocbg, ob, I, KH, KW).transpose(0, 1, 3, 4, 5, 2)
    return np.ascontiguousarray(w.reshape(G * ocbg, I, KH, KW, ob))


def pack_paired_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """OIHW (I = C/groups, an even count of groups of half a vector) -> [G/2, I, KH, KW, 2 * O/G], lane
    2i + h of block j holding output channel i of group 2j + h (tiling.paired_groups)."""
    weight = np.asarray(weight, dtype=np.float32)
    O, I, KH, KW = weight.shape
    G = int(groups)
    assert G % 2 == 0 and O % G == 0, (O, G)
    w = weight.reshape(G // 2, 2, O // G, I, KH, KW).transpose(0, 3, 4, 5, 2, 1)
    return np.ascontiguousarray(w.reshape(G // 2, I, KH, KW, 2 * O // G))


# ----------------------------------------------------------------------------
# compute
# ----------------------------------------------------------------------------
def direct_conv2d_compute(
    data: te.Tensor,
    packed_weight: te.Tensor,
    bias: te.Tensor | None = None,
    *,
    out_channels: int,
    kernel,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    oc_block: int,
    activation: str = "none",
    residual: te.Tensor | None = None,
    column_phases: bool = False,
    out_block: int | None = None,
    blocked_padding: bool = False,
) -> te.Tensor:
    """NCHW fp32 conv2d with packed weights; bias, residual and activation fused.

    ``padding`` is an int, (ph, pw) or (top, left, bottom, right).
    ``residual`` (N, O, OH, OW) is added before the activation.
    ``out_block`` = b: the output (and the residual) in the blocked layout [N, O/b, OH, OW, b].
    ``column_phases`` (for a column stride S > 1): the padded input is stored as S column phases,
    ``[N, C, HP, S, ceil(WP / S)]`` with column x at ``[.., x % S, x // S]``, so that a kernel vectorized
    over output columns reads contiguous vectors instead of gathering every S-th value.
    ``blocked_padding``: a channel-blocked input is padded into a blocked copy (for kernels vectorized over
    output channels, which read it a broadcast per input channel); else the padded copy is NCHW.
    """
    N, C, H, W = (int(x) for x in data.shape)
    O = int(out_channels)
    KH, KW = _pair(kernel)
    SH, SW = _pair(stride)
    DH, DW = _pair(dilation)
    PT, PL, PB, PR = _padding4(padding)
    G = int(groups)
    ob = int(oc_block)
    assert C % G == 0 and O % G == 0, (C, O, G)
    icpg = C // G
    ocpg = O // G
    paired = G > 1 and ob == 2 * ocpg  # two groups a block (tiling.paired_groups; pack_paired_weight)
    ocbg = _ceil_div(ocpg, ob)
    if G == 1:
        ocbg = max(ocbg, int(packed_weight.shape[0]))  # zero blocks beyond the channels (tiling.output_blocks)
    OCB = G // 2 if paired else G * ocbg
    exp_w = (OCB, icpg, KH, KW, ob)
    got_w = tuple(int(x) for x in packed_weight.shape)
    if got_w != exp_w:
        raise ValueError(f"packed weight shape {got_w}, expected {exp_w}")
    OH = (H + PT + PB - (KH - 1) * DH - 1) // SH + 1
    OW = (W + PL + PR - (KW - 1) * DW - 1) // SW + 1
    assert OH > 0 and OW > 0

    HP, WP = H + PT + PB, W + PL + PR

    def _padded(n, c, y, x):
        cond = tirx.all(y >= PT, y < PT + H, x >= PL, x < PL + W)
        return tirx.if_then_else(cond, data[n, c, y - PT, x - PL], tirx.const(0.0, "float32"))

    phases = SW if column_phases else 1
    if paired:
        # the input of each pair of groups interleaved, [N, G/2, HP, WP, 2 * icpg] with channel c of group
        # 2j + h at [.., j, y, x, 2c + h]: the kernel broadcasts the pair (c of both groups) as one 64-bit value
        assert G % 2 == 0, G  # (tiling.paired_groups: whole channel blocks of two groups each)
        def _interleaved(n, j, y, x, k):
            # the read clamped into the input, so that it needs no branch (the border a select): LLVM then joins
            # the two groups' halves, each stored every other lane, into one shuffle and store a pixel
            inside = tirx.all(y >= PT, y < PT + H, x >= PL, x < PL + W)
            yi, xi = (tirx.max(tirx.min(v, extent - 1), 0) for v, extent in ((y - PT, H), (x - PL, W)))
            return tirx.Select(inside, data[n, (j * 2 + k % 2) * icpg + k // 2, yi, xi], tirx.const(0.0, "float32"))

        interleaved = te.compute((N, OCB, HP, WP, 2 * icpg), _interleaved, name=PAD_BLOCK)
    elif phases > 1:
        split = te.compute((N, C, HP, phases, _ceil_div(WP, phases)),
                           lambda n, c, y, p, x: _padded(n, c, y, x * phases + p), name=PAD_BLOCK)

        def dp_at(n, c, y, x):
            return split[n, c, y, x % phases, x // phases]
    elif (PT or PL or PB or PR) and blocked_padding and isinstance(data, BlockedView):
        # the padded copy keeps the input's channel blocks: a contiguous copy, and the kernel's broadcasts
        # for consecutive input channels read one cache line (an NCHW copy gathered every 16th value and
        # put each channel in a plane of its own: stride-2 3x3 convs ran at half the stride-1 speed)
        blk = data.block  # (a padded last block is copied whole: its pad lanes are stored zeros, never read)
        padded = te.compute((N, -(-C // blk), HP, WP, blk), lambda n, cb, y, x, cl: _padded(n, cb * blk + cl, y, x),
                            name=PAD_BLOCK)

        def dp_at(n, c, y, x):
            return padded[n, c // blk, y, x, c % blk]
    elif PT or PL or PB or PR:
        padded = te.compute((N, C, HP, WP), _padded, name=PAD_BLOCK)

        def dp_at(n, c, y, x):
            return padded[n, c, y, x]
    else:

        def dp_at(n, c, y, x):
            return data[n, c, y, x]

    rc = te.reduce_axis((0, icpg), name="rc")
    ry = te.reduce_axis((0, KH), name="ry")
    rx = te.reduce_axis((0, KW), name="rx")

    if G == 1:

        def _chan(b, c):
            return c

    else:

        def _chan(b, c):
            return (b // ocbg) * icpg + c

    if paired:
        # [N, G/2, OH, OW, ocpg, 2]: channel i of group 2j + h at [.., j, y, x, i, h] (the schedule fuses the
        # last two axes into the vector's lanes 2i + h; apart, the epilogue's reads are ones compute-at solves)
        acc = te.compute(
            (N, OCB, OH, OW, ocpg, 2),
            lambda n, b, y, x, i, h: te.sum(
                interleaved[n, b, y * SH + ry * DH, x * SW + rx * DW, rc * 2 + h]
                * packed_weight[b, rc, ry, rx, i * 2 + h],
                axis=[rc, ry, rx],
            ),
            name=ACC_BLOCK,
        )

        def _acc(n, o, y, x):
            group = o // ocpg
            return acc[n, group // 2, y, x, o % ocpg, group % 2]

    else:
        acc = te.compute(
            (N, OCB, OH, OW, ob),
            lambda n, b, y, x, l: te.sum(
                dp_at(n, _chan(b, rc), y * SH + ry * DH, x * SW + rx * DW) * packed_weight[b, rc, ry, rx, l],
                axis=[rc, ry, rx],
            ),
            name=ACC_BLOCK,
        )

        if G == 1 or ocpg % ob == 0:
            # no per-group padding: block o // ob holds channel o

            def _acc(n, o, y, x):
                return acc[n, o // ob, y, x, o % ob]

        else:

            def _acc(n, o, y, x):
                return acc[n, (o // ocpg) * ocbg + (o % ocpg) // ob, y, x, (o % ocpg) % ob]

    # per register tile only when output channel o sits in block o // ob (no per-group zero padding; paired:
    # in [o // ob, .., o % ocpg, o // ocpg % 2]) and a blocked output's blocks are the accumulator's: other
    # index maps are not ones TIR's compute-at can invert
    tiled = int((G == 1 or ocpg % ob == 0 or paired) and out_block in (None, ob))
    return output_compute((N, O, OH, OW), _acc, bias=bias, residual=residual, activation=activation,
                          out_block=out_block, attrs={TILED_EPILOGUE: tiled}, name=OUT_BLOCK)


# ----------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------
def find_direct_conv2d_funcs(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs of ``mod`` that contain a ``dconv_acc`` block."""
    names = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        try:
            tvm.s_tir.Schedule(func).get_sblock(ACC_BLOCK)
        except Exception:
            continue
        names.append(gv.name_hint)
    return names


def schedule_direct_conv2d(
    sch: "tvm.s_tir.Schedule",
    func_name: str | None = None,
    target=None,
    *,
    ow_tile: int | None = None,
    oc_tile: int | None = None,
    reduction_order: str | None = None,
    mode: str | None = None,
) -> None:
    """Apply the default x86 schedule, in place, to a PrimFunc made from
    :func:`direct_conv2d_compute`.

    ``sch`` is a ``tvm.s_tir.Schedule`` over an IRModule (or over the PrimFunc
    itself, then ``func_name=None``); ``func_name`` is the PrimFunc's GlobalVar
    name in that module (e.g. the ``primfunc_name_hint`` given to ``emit_te``;
    :func:`find_direct_conv2d_funcs` lists them).  ``target`` is a
    convopt Target (its ``lanes`` decide the vector width).  The schedule works on
    ``sch`` in place; take ``sch.mod`` afterwards.  A function can be scheduled
    only once (its blocks are renamed/split by the first call).

    Optional overrides (defaults are chosen from the shapes): ``ow_tile`` /
    ``oc_tile`` = register tile (output columns x output-channel blocks);
    ``reduction_order`` e.g. ``"rc,ry,rx"`` (the default, measured best);
    ``mode`` = ``"oc"`` (vectorize over the channel block; default when
    ``oc_block`` >= half a vector) or ``"ow"`` (vectorize over output columns;
    default for depthwise / small groups). The tile rules are in tiling.py.

    "oc" mode loops (1x1 kernels with weights smaller than their input: ``parallel(n, oh, ocb/oc_tile)``):
    ``parallel(n, ocb/oc_tile, oh) > ow/ow_tile > rc > kh > kw >
    unroll(oc_tile) > unroll(ow_tile) > vectorize(oc_block)`` (2 x 4 tile of
    8-lane vectors with AVX2, 2 x 8 of 16-lane ones with AVX-512); a 1x1's
    ``rc`` is split by ``tiling.reduction_unroll`` and its inner part unrolled
    inside ``kw``.  The
    accumulator tile becomes a small stack buffer; the epilogue (bias,
    residual, activation, the store) is computed per tile with
    ``reverse_compute_at``.  "ow" mode: ``parallel(n, ocb, oh) > ow/ow_tile > rc >
    kh > kw > unroll(oc_block) > vectorize(ow_tile)`` with a whole output row
    per tile when it fits.  Padding is its own parallel, vectorized pass.
    """
    if func_name is not None:
        sch.work_on(func_name)
    lanes = target.lanes

    acc = sch.get_sblock(ACC_BLOCK, func_name)
    out = sch.get_sblock(OUT_BLOCK, func_name)

    weight = packed_weight_buffer(sch, acc)
    loops = sch.get_loops(acc)
    paired = len(loops) == 9  # two groups a block: their channels' lanes 2i + h (the compute's paired accumulator)
    if paired:
        loops = [*loops[:4], sch.fuse(*loops[4:6]), *loops[6:]]
    n, b, y, x, l, rc, ry, rx = loops
    OCB, OW, OB = (loop_extent(sch, v) for v in (b, x, l))

    # --- padding: its own parallel pass (cheap; keeps the hot loop branch-free)
    pad = optional_block(sch, PAD_BLOCK, func_name)
    if pad is not None:
        pn, pc, ph, *_, pw = sch.get_loops(pad)  # (phase,) column
        sch.parallel(sch.fuse(pn, pc, ph))
        if paired:
            # interleaved pairs: each group's half read as a vector, stored every other lane (LLVM's SLP
            # vectorizer joins the two halves' stores into one interleaving shuffle and store)
            half, group = sch.split(pw, [None, 2])
            sch.reorder(group, half)
            sch.unroll(group)
            sch.vectorize(half)
        elif loop_extent(sch, pw) >= lanes:
            _, pwi = sch.split(pw, [None, lanes])
            sch.vectorize(pwi)

    if mode is None:
        mode = "oc" if tiling.vectorizes_channels(OB, lanes) else "ow"
    if mode not in ("oc", "ow"):
        raise ValueError(f"mode must be 'oc' or 'ow', got {mode!r}")
    chunked = False
    if mode == "oc":
        # Register tile: oc_tile blocks of OB channels x ow_tile output columns,
        # vectorized over the OB channels (tiling.channel_tile / column_tile).
        # Tunable: both tiles are MetaSchedule samples whose default decision is the heuristic's tile
        # (tiling.py), so the untuned schedule is the default trace and tuning searches around it.
        default_oc, _ = tiling.channel_tile(OCB, OB, lanes, OW)
        oc_tile = oc_tile or default_oc
        default_ow = ow_tile or tiling.column_tile(OW, OCB, OB, lanes)
        bo, bi = sch.split(b, [None, sample(sch, tiling.channel_tiles(OCB, oc_tile), oc_tile)])
        xo, xi = sch.split(x, [None, sample(sch, tiling.column_tiles(OW, default_ow, lanes), default_ow)])
        ow_tile = default_ow  # the epilogue's choices below hold for every candidate (column_tiles)
        red = {"rc": rc, "ry": ry, "rx": rx}
        taps = loop_extent(sch, ry) * loop_extent(sch, rx)
        one_by_one = taps == 1
        chunk = int(sch.get(out).annotations[TILED_EPILOGUE]) and tiling.reduction_chunk(
            loop_extent(sch, rc), oc_tile * OB * taps, target.caches["L1d"],
            layer_weights=taps * loop_extent(sch, rc) * OCB * OB, l2_bytes=target.caches.get("L2"),
            rows=tiling.pass_rows(loop_extent(sch, n) * -(-OCB // oc_tile), loop_extent(sch, y), target.cores))
        rows_first = one_by_one and tiling.rows_outermost(
            weights=OCB * OB * loop_extent(sch, rc), in_passes=bool(chunk),
            inputs=loop_extent(sch, rc) * loop_extent(sch, y) * OW)
        chunked = bool(chunk) and not rows_first
        unrolled = []  # a 1x1's channels unrolled by a few, inside the taps (tiling.reduction_unroll)
        if one_by_one and not chunked:
            red["rc"], inner = unrolled_channels(sch, rc)
            unrolled = [inner]
        order = [red[k] for k in (reduction_order or "rc,ry,rx").split(",")]
        if rows_first:
            # 1x1 with weights smaller than the input: output rows outermost, so one input row serves
            # every channel block while it is in cache; measured ~1.2x on 256->64.
            sch.reorder(n, y, bo, xo, *order, *unrolled, bi, xi, l)
            sch.parallel(sch.fuse(n, y, bo))
        elif chunk:
            # the tile's weights in passes over the input channels that fit the L1, each pass over every output
            # row (tiling.reduction_chunk)
            rco, rci = sch.split(rc, [None, chunk])
            if one_by_one:
                rci, inner = unrolled_channels(sch, rci)
                unrolled = [inner]
            y = chunked_passes(sch, n, bo, y, rco, [xo, rci, ry, rx, *unrolled, bi, xi, l], target.cores)
        else:
            sch.reorder(n, bo, y, xo, *order, *unrolled, bi, xi, l)
            sch.parallel(sch.fuse(n, bo, y))
        if paired and UNROLL_PAIRED_TAPS:
            sch.unroll(rx)
        sch.unroll(bi)
        sch.unroll(xi)
        sch.vectorize(l)
    else:
        # small channel blocks (depthwise, tiny groups): vectorize over output columns
        if ow_tile is None:
            ow_tile = tiling.row_tile(OW, lanes) if OB == 1 else tiling.group_row_tile(OW, lanes)
        if OB > 1:
            columns_innermost(sch, acc)
        xo, xi = sch.split(x, [None, ow_tile])
        sch.reorder(n, b, y, xo, rc, ry, rx, l, xi)
        sch.parallel(sch.fuse(n, b, y))
        sch.unroll(l)
        if OW % ow_tile == 0:
            sch.vectorize(xi)
        else:
            sch.unroll(xi)
    # vectorize/unroll first: after decompose_reduction vectorize fails
    sch.decompose_reduction(acc, sch.get_loops(acc)[1 if chunked else 2])
    if chunked:  # (after decompose_reduction, which would copy the mark to the initialisation's loops)
        prefetch.annotate(sch, y, weight, bi, rci, ry, rx, l, *unrolled)

    # --- epilogue computed per register tile (the accumulator tile stays local).
    # The tile-sized accumulator keeps "global" scope: small global allocations become stack allocas,
    # whereas a "local" one turns into a TVMBackendAllocWorkspace call per tile (1.6x slower on depthwise).
    blocked = len(sch.get(out).iter_vars) == 5
    if chunked:  # the epilogue once the last pass is done, over the task's rows
        sch.reverse_compute_at(out, sch.get_loops(acc)[0], preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(out)[-1])
    elif int(sch.get(out).annotations[TILED_EPILOGUE]):
        sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
        last = sch.get_loops(out)[-1]  # NCHW: output columns of the tile; blocked: the channel block
        if blocked and paired:
            # each group's half of the block from every other accumulator lane: two half-vector stores whose
            # strided reads LLVM makes one load and shuffles (a 16-lane read of lanes 2i + h gathered them)
            group, half = sch.split(last, [2, None])
            sch.unroll(group)
            sch.vectorize(half)
        elif blocked or (1 < loop_extent(sch, last) <= 8 * lanes and OW % ow_tile == 0):
            sch.vectorize(last)
        # (measured slower: unrolling the epilogue's channel loop; vectorizing the epilogue over channels
        # with strided NCHW stores)
    else:  # a separate parallel pass over the output
        en, eo, ey, ex, *lane = sch.get_loops(out)
        sch.parallel(sch.fuse(en, eo, ey))
        if lane:
            sch.vectorize(lane[0])
        elif OW >= lanes:
            sch.vectorize(sch.split(ex, [None, lanes])[1])


# ----------------------------------------------------------------------------
# the lowering contract (conv_spec.py)
# ----------------------------------------------------------------------------
def supports(spec) -> str | None:
    return None  # every conv: any kernel, stride, dilation and groups


def splits_columns(spec, lanes: int) -> bool:
    """Strided convs vectorized over output columns read their input as column phases (see the compute)."""
    return spec.stride[1] > 1 and not tiling.vectorizes_channels(tiling.channel_block(spec.out_per_group, lanes),
                                                                 lanes)


def workspace_bytes(spec, lanes: int) -> int:
    """The zero-padded input, in column phases when split, or interleaved by pairs of groups (the accumulator
    is one register tile per thread)."""
    ph, pw = spec.padding
    if tiling.paired_groups(spec.groups, spec.in_channels, spec.out_channels, lanes):  # the interleaved copy
        return 4 * spec.batch * spec.in_channels * (spec.height + 2 * ph) * (spec.width + 2 * pw)
    sw = spec.stride[1] if splits_columns(spec, lanes) else 1
    if not (ph or pw or sw > 1):
        return 0
    return 4 * spec.batch * spec.in_channels * (spec.height + 2 * ph) * sw * _ceil_div(spec.width + 2 * pw, sw)


def prepare_weight(weight, spec, lanes):
    if tiling.paired_groups(spec.groups, spec.in_channels, spec.out_channels, lanes):
        return (pack_paired_weight(weight, spec.groups),)
    blocks = tiling.output_blocks(spec.groups, spec.out_per_group, lanes, spec.out_width)
    return (pack_weight(weight, spec.groups, tiling.channel_block(spec.out_per_group, lanes),
                        blocks if spec.groups == 1 else None),)


def compute(data, packed, *, bias=None, residual=None, spec, activation="none", lanes=8, out_block=None):
    ob = int(packed.shape[-1])
    return direct_conv2d_compute(data, packed, bias, out_channels=spec.out_channels, kernel=spec.kernel,
                                 stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                                 groups=spec.groups, oc_block=ob, activation=activation, residual=residual,
                                 column_phases=splits_columns(spec, lanes), out_block=out_block,
                                 blocked_padding=tiling.vectorizes_channels(ob, lanes))


def blocked_io(spec, lanes: int) -> bool:
    """In "oc" mode (vectorized over a block of output channels) blocked tensors are whole vectors."""
    return tiling.vectorizes_channels(tiling.channel_block(spec.out_per_group, lanes), lanes)


LOWERING = Lowering("direct", supports, workspace_bytes, prepare_weight, compute, schedule_direct_conv2d,
                    blocked_io=blocked_io, weight_channel_axis=1)  # [OCB, I, KH, KW, ob]
