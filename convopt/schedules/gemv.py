"""A conv that is a matrix-vector product: a 1x1 kernel over a one-pixel map (squeeze-excite's two convs, a
classifier written as a conv). With the weight W [O, C, 1, 1] packed as the dense kernel packs its weight,
Wp [ceil(O / L), C, L] (schedules/dense.py, L = the SIMD lanes, the last block zero-padded):

    acc[n, b, l]     = sum_c x[n, c, 0, 0] * Wp[b, c, l]
    out[n, o, 0, 0]  = act(acc[n, o // L, o % L] + bias[o] + residual[n, o, 0, 0])

Schedule (x86): [parallel] (n, blocks / 8) > c > unroll(8 blocks) > vectorize(l): a stream over the
weight, up to eight independent accumulators; the cores share it only when it is large
(``PARALLEL_WEIGHT_BYTES``). The other lowerings tile pixels (of which there is one) or
channels in blocks built for maps: efficientnet_b0's squeeze-excite convs (e.g. 1152 -> 48) took 15-23 us a
call as im2col or im2win inside the model, 3-5% of the machine's peak (2-5 us alone, with the weight in
cache; this kernel 1-3 us there, and one of them measured 0.19 us as im2win against 0.21 as gemv). A
one-pixel map is stored alike in NCHW and in channel blocks, so this kernel reads and writes either.

select_lowering runs every conv this lowering supports with it (a rule, not a prediction: no other lowering
has been measured much faster on a single pixel, and it needs no calibration); a ``lowering=`` override
can still force another. The register tile is a tunable choice (a MetaSchedule sample).
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .conv_spec import OUTPUT_BLOCK, Lowering, loop_extent, output_compute, sample
from .dense import pack_weight

ACC_BLOCK = "gemv_acc"
# output vectors accumulated at once: independent FMA chains, so each channel's FMAs overlap (a single chain
# waits out the FMA latency at every channel: 1152 -> 48 took 11 us that way)
REGISTER_TILE = 8
# the cores share the stream over a weight of this size or more: in a model the weight comes from L3 or memory
# (efficientnet_b0's 1152 -> 48 weight, 221 KB: 18 us on one core, 11 on two); a smaller one is done on one
# core sooner than the others wake (a parallel call costs 2-3 us)
PARALLEL_WEIGHT_BYTES = 64 * 1024


def supports(spec) -> str | None:
    if spec.kernel != (1, 1) or spec.groups != 1 or spec.padding != (0, 0):
        return f"gemv runs 1x1 convs without groups or padding, not {spec.describe()}"
    if (spec.height, spec.width) != (1, 1):
        return f"gemv runs convs over a one-pixel map, not {spec.height}x{spec.width}"
    return None


def workspace_bytes(spec, lanes: int) -> int:
    return 0


def prepare_weight(weight, spec, lanes):
    """[O, C, 1, 1] -> [ceil(O / L), C, L], zero-padded output channels."""
    return (pack_weight(np.asarray(weight, np.float32).reshape(spec.out_channels, spec.in_channels), lanes),)


def compute(data, packed, *, bias=None, residual=None, spec, activation="none", lanes=8, out_block=None):
    blocks, channels, width = (int(v) for v in packed.shape)
    c = te.reduce_axis((0, channels), name="c")
    acc = te.compute((spec.batch, blocks, width),
                     lambda n, b, lane: te.sum(data[n, c, 0, 0] * packed[b, c, lane], axis=c), name=ACC_BLOCK)
    return output_compute(spec.output_shape, lambda n, o, y, x: acc[n, o // width, o % width], bias=bias,
                          residual=residual, activation=activation, out_block=out_block)


def schedule_cpu(sch, func_name, target) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    acc = sch.get_sblock(ACC_BLOCK, func_name)
    n, b, lane, c = sch.get_loops(acc)
    batch, blocks, channels = (loop_extent(sch, loop) for loop in (n, b, c))
    weight_bytes = 4 * blocks * channels * target.lanes
    shared = weight_bytes >= PARALLEL_WEIGHT_BYTES or batch * weight_bytes >= 4 * PARALLEL_WEIGHT_BYTES
    # shared: at least two tiles per core where there are blocks enough (1152 -> 48 has 3 blocks of 16)
    tile = max(1, min(REGISTER_TILE, blocks // (2 * target.cores) if shared else blocks))
    tiles = sorted({t for t in (1, 2, 4, 8, tile) if t <= blocks})
    bo, bi = sch.split(b, [None, sample(sch, tiles, tile)])  # tunable
    sch.reorder(n, bo, c, bi, lane)
    if shared:
        sch.parallel(sch.fuse(n, bo))
    sch.unroll(bi)
    sch.vectorize(lane)
    sch.decompose_reduction(acc, c)
    # the epilogue (a sigmoid over 1152 gates is most of the call if scalar): vectorized over whole vectors
    out = sch.get_sblock(OUTPUT_BLOCK, func_name)
    loops = sch.get_loops(out)
    if len(loops) == 5:  # blocked: [N, O/b, 1, 1, b]
        sch.vectorize(loops[-1])
    elif blocks * target.lanes == loop_extent(sch, loops[1]):  # NCHW with O a whole number of vectors
        sch.vectorize(sch.split(sch.fuse(*loops[1:]), [None, target.lanes])[1])


LOWERING = Lowering("gemv", supports, workspace_bytes, prepare_weight, compute, schedule_cpu,
                    blocked_io=lambda spec, lanes: True)  # one pixel: both layouts store it alike
