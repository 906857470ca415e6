"""The CPU kernel of max pooling over NCHW tensors:

    P[n, c, y, r, j] = x[n, c, y - ph, j sw + r - pw]    (-inf outside x)         r < sw: the column's phase
    out[n, c, oh, ow] = max_{rh < kh, rw < kw} P[n, c, oh sh + rh dh, (rw dw) mod sw, ow + (rw dw) div sw]

Each row of the padded input is stored as its sw phases side by side (column j sw + r at [r, j]), so for a
fixed tap (rh, rw) the window's element for consecutive outputs ow is consecutive in P: the max runs as
vector loads and maxes over the output row, with no bounds test (the padding is in P). TVM's generic pool
reads x[.., ow sw + rw dw - pw] under a bounds test for every tap: with the output row vectorized that is a
gather of strided lanes each behind its own branch, and over an NCHW tensor it ran at 8-22x its memory
bound (a 3x3 s2 pool of 24 channels at 64x64: 65 us on Zen 5; resnext50's 64 channels at 64x64: 0.46 ms).
Channel-blocked tensors (NCHW[b]c) don't need this: there the lanes are channels and the bounds test is one
per vector (cpu_fallback.py schedules them).

With sw = 1 the phases are the padded rows themselves (no second copy).

Schedule: parallel over bands of output rows of each channel (n, c, band), a band as many rows as keep its
rows of P within a quarter of L1 (a whole plane where it fits: no row is copied twice), and at least 4 tasks
per core. The band's padded rows are built at that loop, their -inf border written apart from the copy of
the interior (decompose_padding), so the copy is a plain vector loop; then the phases; then each output row's
max, vectorized over ow, the taps outside it. Measured alone on Zen 5 (2 threads, warm, 3x3 s2 p1), against
TVM's generic pool with convopt's default CPU schedule: 24 channels at 64x64 20 vs 36-94 us, 64 at 64x64
52 vs 310-450, 64 at 112x112 122-149 vs 2400-2700 (memory bound 64); 256 at 14x14 3x3 s1: 29 vs 129.

Channel-blocked tensors (NCHW[b]c, [N, C/b, H, W, b]) have their own kernel, ``blocked_max_pool_prim_func``:

    out[n, cb, oh, ow, l] = max_{rh < kh, rw < kw} x[n, cb, clamp(oh sh + rh - ph), clamp(ow sw + rw - pw), l]

the lanes are the channel block, so every tap is one vector load. With dilation 1 a window is a contiguous
range that holds at least one element of x (PyTorch requires a window to start inside x or its left padding),
so clamping an index that falls in the padding to the nearest edge gives an element of the same window: the
max doesn't change (max is idempotent), and there is neither a padding test nor a padded copy. Dilated pools
are left to Relax's pool. Schedule: parallel over output rows of each channel block, the taps unrolled, the
lanes vectorized.

NaN (both kernels): PyTorch's max pool returns NaN for a window that holds one. backends/nan_semantics.py makes
each float max of two values NaN-propagating with three compares and three blends, which made the blocked
pool compute bound (resnet18's pool, 64 channels at 112x112: 68-83 us alone on Zen 5, 87 us in the model).
Here the window's max runs as x86's plain max (a select the NaN pass leaves alone) beside the integer max of
the taps' magnitude bits (|x| as an int32; above that of inf only for NaN): the result is NaN where that
exceeds inf's bits. Two integer operations a tap instead of five float ones: the same pool 19.6 us (23 us
without any NaN handling).
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

from ..ir.layout import blocked_layout, stored_shape
from .tiling import divisor_tile

PADDED, PHASES, POOL, RESULT = "pool_padded", "pool_phases", "pool_max", "pool_result"
_MAGNITUDE, _INF_BITS = 0x7FFFFFFF, 0x7F800000  # float32: |x| as int32; inf's, which only NaN exceeds
_UNROLLED_TAPS = 64  # the most taps of a window unrolled (YOLO's SPP pools: 5x5, 9x9 and 13x13)


def _max_and_magnitude(a, b):
    # the max as x86's maxps (the NaN pass rewrites tirx.Max, not a select); the magnitudes' integer max
    return tirx.Select(a[0] > b[0], a[0], b[0]), tirx.Max(a[1], b[1])


_WINDOW_MAX = te.comm_reducer(_max_and_magnitude,
                              lambda t0, t1: (tirx.const(float("-inf"), t0), tirx.const(0, t1)), name="window_max")


def _nan_propagating_max(shape, tap, axis):
    """The max over ``axis`` of ``tap(*index)`` for every index of ``shape``, NaN where a tap is NaN: a window
    reduction (its max and its largest magnitude bits) and a result stage."""
    def window(*index):
        value = tap(*index)
        if value.dtype != "float32":
            raise ValueError(f"convopt's max pool kernels are float32, not {value.dtype}")
        return _WINDOW_MAX((value, tirx.reinterpret("int32", value) & tirx.const(_MAGNITUDE, "int32")), axis=axis)

    maximum, magnitude = te.compute(shape, window, name=POOL)
    return te.compute(shape, lambda *i: tirx.Select(magnitude(*i) > tirx.const(_INF_BITS, "int32"),
                                                    tirx.const(float("nan"), "float32"), maximum(*i)), name=RESULT)


def _compute(x, out_shape, kernel, stride, padding, dilation):
    n_, c_, h_, w_ = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    rows, columns = _padded_extent(out_shape, kernel, stride, dilation)
    lowest = tirx.const(float("-inf"), x.dtype)  # PyTorch's padding: a window of -inf and padding is -inf

    def padded(n, c, y, col):
        iy, ix = y - ph, col - pw
        return tirx.if_then_else(tirx.all(iy >= 0, iy < h_, ix >= 0, ix < w_), x[n, c, iy, ix], lowest)

    padded = te.compute((n_, c_, rows, columns * sw), padded, name=PADDED)
    if sw == 1:
        def phases(index):  # one phase: the padded rows
            n, c, y, _, j = index
            return padded[n, c, y, j]
    else:
        phases = te.compute((n_, c_, rows, sw, columns), lambda n, c, y, r, j: padded[n, c, y, j * sw + r],
                            name=PHASES).__getitem__
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")
    return _nan_propagating_max(tuple(out_shape), lambda n, c, oh, ow: phases(
        (n, c, oh * sh + rh * dh, rw * dw % sw, ow + rw * dw // sw)), [rh, rw])


def _padded_extent(out_shape, kernel, stride, dilation) -> tuple[int, int]:
    """(rows of P, columns of each of its phases): what the output's windows reach."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_shape[2:]
    return (oh - 1) * sh + (kh - 1) * dh + 1, ow + (kw - 1) * dw // sw


def _band_rows(out_rows: int, stride: int, window_rows: int, row_bytes: int, budget: int, planes: int,
               cores: int) -> int:
    """Output rows per task: as many as keep the band's rows of P within ``budget`` bytes and give every core
    4 tasks over ``planes`` channel planes, preferring a divisor of ``out_rows`` (no partial band) at least
    half that many."""
    most = min(out_rows, max(1, (budget // row_bytes - window_rows) // stride + 1),
               max(1, out_rows * planes // (4 * cores)))
    return divisor_tile(out_rows, range(most, (most + 1) // 2 - 1, -1)) or most


def _vector_split(sch, loop, extent: int, lanes: int, most: int = 64):
    """The inner loop to vectorize: all of ``extent`` up to ``most`` elements, else the largest divisor of it
    that is a whole number of vectors and at most ``most``; None when neither exists (left scalar)."""
    if extent <= most:
        return loop
    inner = divisor_tile(extent, range(most - most % lanes, lanes - 1, -lanes))
    return None if inner is None else sch.split(loop, [None, inner])[1]


def max_pool_prim_func(in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                       target, dtype: str = "float32") -> tirx.PrimFunc:
    """The scheduled max pool of an NCHW ``in_shape`` into ``out_shape`` (PyTorch's, ceil mode included: the
    IR node's type) for a CPU ``target`` (its lanes, L1 and cores): arguments x, out."""
    (ph, pw), (sh, sw) = padding, stride
    rows, columns = _padded_extent(out_shape, kernel, stride, dilation)
    needs_padding = ph > 0 or pw > 0 or rows - ph > in_shape[2] or columns * sw - pw > in_shape[3]
    x = te.placeholder(tuple(in_shape), dtype, name="x")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, _compute(x, out_shape, kernel, stride, padding, dilation)]))
    pool = sch.get_sblock(POOL)
    n, c, oh, ow, rh, rw = sch.get_loops(pool)
    out_rows, row_bytes = int(out_shape[2]), columns * sw * 4 * (2 if sw > 1 else 1)
    band = _band_rows(out_rows, sh, (kernel[0] - 1) * dilation[0] + 1, row_bytes, target.caches["L1d"] // 4,
                      int(out_shape[0]) * int(out_shape[1]), target.cores)
    task = sch.fuse(n, c, sch.split(oh, [None, band])[0]) if band < out_rows else sch.fuse(n, c)
    inner_rows = sch.get_loops(pool)[1]
    sch.reorder(task, inner_rows, rh, rw, ow)
    sch.parallel(task)
    vector = _vector_split(sch, ow, int(out_shape[3]), target.lanes)
    if vector is not None:
        sch.vectorize(vector)
    result = sch.get_sblock(RESULT)
    sch.reverse_compute_at(result, inner_rows)  # a row's max and magnitudes stay a row
    result_vector = _vector_split(sch, sch.get_loops(result)[-1], int(out_shape[3]), target.lanes)
    if result_vector is not None:
        sch.vectorize(result_vector)
    sch.decompose_reduction(pool, rh)
    if sw > 1:
        phases = sch.get_sblock(PHASES)
        sch.compute_at(phases, task, preserve_unit_loops=True)
        *_, y, r, j = sch.get_loops(phases)
        sch.reorder(y, j, r)  # the phases of a column pair (sw of them) from one contiguous read
        sch.unroll(r)
    padded = sch.get_sblock(PADDED)
    sch.compute_at(padded, task, preserve_unit_loops=True)
    if needs_padding:  # (else decompose_padding refuses a block with no border)
        fill = sch.decompose_padding(padded, sch.get_loops(padded)[-2])
        sch.vectorize(sch.get_loops(fill)[-1])
    sch.vectorize(sch.get_loops(padded)[-1])
    return sch.mod["main"]


def blocked_max_pool_prim_func(in_shape: tuple[int, ...], out_shape: tuple[int, ...], block: int,
                               kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                               dilation: tuple[int, int]) -> tirx.PrimFunc | None:
    """The scheduled max pool of a channel-blocked tensor of logical NCHW ``in_shape`` into ``out_shape``
    (the IR node's type, ceil mode included), both stored NCHW[block]c: arguments x, out. None for a
    dilated window (its clamped taps could leave the window)."""
    if tuple(dilation) != (1, 1):
        return None
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    layout = blocked_layout(block)
    x = te.placeholder(stored_shape(tuple(int(d) for d in in_shape), layout), "float32", name="x")
    h_, w_ = int(in_shape[2]), int(in_shape[3])
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")

    def tap(n, cb, oh, ow, lane):
        return x[n, cb, tirx.max(tirx.min(oh * sh + rh - ph, h_ - 1), 0),
                 tirx.max(tirx.min(ow * sw + rw - pw, w_ - 1), 0), lane]

    out = _nan_propagating_max(stored_shape(tuple(int(d) for d in out_shape), layout), tap, [rh, rw])
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    pool = sch.get_sblock(POOL)
    n, cb, oh, ow, lane, rh, rw = sch.get_loops(pool)
    task = sch.fuse(n, cb, oh)
    sch.reorder(task, ow, rh, rw, lane)
    sch.parallel(task)
    if kh * kw <= _UNROLLED_TAPS:
        sch.unroll(rh)
    if kw <= _UNROLLED_TAPS:  # (a window as large as a map, a global max, stays a loop)
        sch.unroll(rw)
    sch.vectorize(lane)
    result = sch.get_sblock(RESULT)
    sch.reverse_compute_at(result, ow)  # one vector of max and magnitudes, in registers
    sch.vectorize(sch.get_loops(result)[-1])
    sch.decompose_reduction(pool, rh)
    return sch.mod["main"]
