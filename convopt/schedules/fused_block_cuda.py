"""The fused blocks on CUDA (passes/fuse_blocks.py): an inverted residual, expand 1x1 -> act -> depthwise kxk
-> act [-> project 1x1 [+ x]], a pointwise MLP, 1x1 -> act -> 1x1 [+ skip], or a conv pair (ResNet's basic
block, VGG / RepVGG pairs), act(B(a1(A(x))) [+ skip]), as one kernel whose intermediates live in shared
memory, tile by tile. (fused_chain.py's bottleneck has no CUDA kernel: two stages with a halo.)

Compute (NCHW, unpadded weights; the depthwise conv's padding p (top and left; ``InvertedResidual.pads``,
asymmetric after TF "SAME" padding's pad op), stride s and dilation r per axis, as the pass matched it;
``inside`` = the padded position is inside the map):

    mid[n, e, yp, xp] = a1(sum_c x[n, c, yp - p, xp - p] w1[e, c] + b1[e])  if inside(yp, xp), else 0
    dw[n, e, y, x]    = a2(sum_{i,j} mid[n, e, s y + r i, s x + r j] w2[e, i, j] + b2[e])
    out[n, o, y, x]   = sum_e dw[n, e, y, x] w3[o, e] + b3[o] (+ x[n, o, y, x])

(without a projection, the kind the pass makes where a squeeze-excite follows, ``out = dw``; a pointwise
MLP has no depthwise stage, p = 0, and projects ``mid``, + its skip, an argument of the kernel; a conv pair
computes A's activations as ``mid`` on B's padded grid and B as the projection, its sum over A's channels
and B's taps: ``_pair_compute``).

Schedule (``schedule_cuda``), a design space whose default decisions are the rules below. One thread block
computes a TH x TW tile of the output for OT x OR of its channels: its threads are OT output-channel
groups x TH x TW pixels, each thread accumulating OR channels of one pixel in registers; the O / (OT OR)
such parts of the channels go to as many thread blocks, each recomputing the tile's intermediates (by
default TH, TW the largest divisors of the map up to 8, OT the largest divisor of O and EC with
OT TH TW <= 256, OR the largest divisor of O / OT up to 32: more accumulators spill registers). The
projection's sum over the expanded channels runs in chunks of EC (16): per chunk the thread block
computes, cooperatively, the chunk's expanded activations for the tile and its halo,
((TH - 1) s + k) x ((TW - 1) s + k) x EC, then its depthwise activations, TH x TW x EC, both into shared
memory (TIR ``compute_at`` at the chunk loop: the regions are inferred, the halo recomputed by
neighbouring tiles; an MLP stages only its expanded activations, TH x TW x EC; a conv pair A's activations
on the tile and B's halo), and every thread adds the chunk to its accumulators. Each element's expansion and depthwise sums
run inside one thread. Without a projection a thread block computes EC channels x the tile, one element
per thread. Tunable (``sample_perfect_tile``, each a factorization of its extent): TH, TW, EC, and the
output channels' split over thread blocks, threads and each thread.
Shared memory per thread block, EC ((TH - 1) s + k) ((TW - 1) s + k) + EC TH TW floats: 10.5 KB for
k = 3, s = 1, 8 x 8 tiles and EC = 16, 22.6 KB at stride 2 (TVM allocates 11.3 and 23.7 KB: it sizes the
halo buffer from the guarded cooperative loop, a channel or two more).

Halo recomputation: an 8 x 8 tile of a 3x3 stride-1 block expands 10 x 10 pixels (1.56x the expand's
FLOPs); larger tiles recompute less but give fewer blocks and threads. This kernel is built (and its
compute checked on the CPU) here; it has never run on a GPU: none is available to this project.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import te, tirx

from .activations import activate
from . import tiling
from .fused_block import KIND, PARTIAL_KIND, padded_vector
from .fused_chain import PAIR_KIND
from .fused_mlp import KIND as MLP_KIND

F32 = "float32"
KINDS = (KIND, PARTIAL_KIND, MLP_KIND, PAIR_KIND)  # the kinds this kernel runs (not yet fused_chain's bottleneck)
EXPAND, EXPAND_ACT, DEPTHWISE, DEPTHWISE_ACT, PROJECT, OUTPUT = (
    "fb_expand", "fb_expand_act", "fb_depthwise", "fb_depthwise_act", "fb_project", "fb_output")
MAX_TILE = 8  # output rows / columns per thread block, by default
MAX_CHUNK = 16  # expanded channels per chunk, by default
TARGET_THREADS = 256  # threads per block the default channel groups aim for
MAX_PER_THREAD = 32  # output channels one thread accumulates, by default


def prepare_weights(block, *arrays) -> list[np.ndarray]:
    """The kernel's constants from the convs' OIHW weights and biases in order (a bias None: zeros):
    [w1 [E, C], b1 [E], w2 [E, k, k], b2 [E], (w3 [O, E], b3 [O])] for an inverted residual (w1, b1, w2, b2[,
    w3, b3] given), [w1 [E, C], b1 [E], w3 [O, E], b3 [O]] for a pointwise MLP (w1, b1, w3, b3 given)."""
    if block.kind == PAIR_KIND:  # OIHW as they are: [wA [M, C, k, k], bA [M], wB [O, M, k, k], bB [O]]
        wa, ba, wb, bb = arrays
        return [np.ascontiguousarray(np.asarray(wa, np.float32)), padded_vector(ba, block.convs[0].out_channels),
                np.ascontiguousarray(np.asarray(wb, np.float32)), padded_vector(bb, block.out_channels)]
    E, C, O = block.expand.out_channels, block.expand.in_channels, block.out_channels
    if block.kind == MLP_KIND:
        w1, b1, w3, b3 = arrays
        weights = [np.asarray(w1, np.float32).reshape(E, C), padded_vector(b1, E),
                   np.asarray(w3, np.float32).reshape(O, E), padded_vector(b3, O)]
    else:
        w1, b1, w2, b2, *projection = arrays
        weights = [np.asarray(w1, np.float32).reshape(E, C), padded_vector(b1, E),
                   np.asarray(w2, np.float32).reshape(E, *block.depthwise.kernel), padded_vector(b2, E)]
        if block.project is not None:
            w3, b3 = projection
            weights += [np.asarray(w3, np.float32).reshape(O, E), padded_vector(b3, O)]
    return [np.ascontiguousarray(w) for w in weights]


def io_shapes(block) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kernel's input and output shapes (NCHW; a pointwise MLP's or a conv pair's skip has the output's)."""
    e_, last = block.convs[0], block.convs[-1]
    return ((e_.batch, e_.in_channels, e_.height, e_.width),
            (e_.batch, block.out_channels, last.out_height, last.out_width))


def compute(block) -> list[te.Tensor]:
    """The kernel's arguments as TE tensors: x, the weights (``prepare_weights``), [the skip of a pointwise
    MLP or a conv pair with one], the output."""
    if block.kind == PAIR_KIND:
        return _pair_compute(block)
    e_ = block.expand
    N, C, H, W = e_.batch, e_.in_channels, e_.height, e_.width
    E, O = e_.out_channels, block.out_channels
    x = te.placeholder((N, C, H, W), F32, name="x")
    w1, b1 = te.placeholder((E, C), F32, name="w1"), te.placeholder((E,), F32, name="b1")
    c = te.reduce_axis((0, C), name="c")
    if block.kind == MLP_KIND:
        expand = te.compute((N, E, H, W), lambda n, e, y, x_: te.sum(x[n, c, y, x_] * w1[e, c], axis=c),
                            name=EXPAND)
        mid = te.compute((N, E, H, W), lambda n, e, y, x_: activate(expand[n, e, y, x_] + b1[e], block.activation),
                         name=EXPAND_ACT)
        skip = te.placeholder((N, O, H, W), F32, name="skip") if block.residual else None
        return [x, w1, b1, *_projection(block, mid, skip, (N, O, H, W))]
    d = block.depthwise
    (kh, kw), (sh, sw), (dh, dw_) = d.kernel, d.stride, d.dilation
    ph, pw, pb, pr = block.pads  # top, left, bottom, right: TF "SAME" padding is asymmetric
    a1, a2 = block.activations
    w2, b2 = te.placeholder((E, kh, kw), F32, name="w2"), te.placeholder((E,), F32, name="b2")

    def inside(yp, xp):
        return tirx.all(yp >= ph, yp < ph + H, xp >= pw, xp < pw + W)

    padded = (N, E, H + ph + pb, W + pw + pr)
    # (the guard is lazy: x is read only inside the map)
    expand = te.compute(padded, lambda n, e, yp, xp: te.sum(
        tirx.if_then_else(inside(yp, xp), x[n, c, yp - ph, xp - pw], tirx.const(0.0, F32)) * w1[e, c], axis=c),
        name=EXPAND)
    mid = te.compute(padded, lambda n, e, yp, xp: tirx.if_then_else(
        inside(yp, xp), activate(expand[n, e, yp, xp] + b1[e], a1), tirx.const(0.0, F32)), name=EXPAND_ACT)
    i, j = te.reduce_axis((0, kh), name="i"), te.reduce_axis((0, kw), name="j")
    OH, OW = d.out_height, d.out_width
    depthwise = te.compute((N, E, OH, OW), lambda n, e, y, x_: te.sum(
        mid[n, e, y * sh + i * dh, x_ * sw + j * dw_] * w2[e, i, j], axis=[i, j]), name=DEPTHWISE)
    dw = te.compute((N, E, OH, OW), lambda n, e, y, x_: activate(depthwise[n, e, y, x_] + b2[e], a2),
                    name=DEPTHWISE_ACT)
    if block.project is None:
        return [x, w1, b1, w2, b2, dw]
    return [x, w1, b1, w2, b2, *_projection(block, dw, x if block.residual else None, (N, O, OH, OW))]


def _projection(block, source: te.Tensor, skip: te.Tensor | None, shape) -> list[te.Tensor]:
    """[w3, b3, (the skip placeholder of an MLP), the output]: out = sum_e source[e] w3[o, e] + b3[o] (+ skip)."""
    O, E = block.out_channels, block.expand.out_channels
    w3, b3 = te.placeholder((O, E), F32, name="w3"), te.placeholder((O,), F32, name="b3")
    r = te.reduce_axis((0, E), name="r")
    project = te.compute(shape, lambda n, o, y, x_: te.sum(source[n, r, y, x_] * w3[o, r], axis=r), name=PROJECT)

    def output(n, o, y, x_):
        value = project[n, o, y, x_] + b3[o]
        return value + skip[n, o, y, x_] if skip is not None else value

    out = te.compute(shape, output, name=OUTPUT)
    own_skip = [skip] if skip is not None and block.kind == MLP_KIND else []  # an MLP's skip is an argument
    return [w3, b3, *own_skip, out]


def _pair_compute(chain) -> list[te.Tensor]:
    """A conv pair (schedules/fused_chain.py): A's activations on B's padded input grid, then B as the
    "projection" (its sum over A's channels and B's taps), + the skip, the last activation:

        mid[n, m, yp, xp] = a1(sum_{c,i,j} x[n, c, (yp - pB) sA + i - pA, (xp - pB) sA + j - pA] wA[m, c, i, j]
                               + bA[m])    where (yp - pB, xp - pB) is inside A's output, else 0
        out[n, o, y, x]   = act(sum_{m,i,j} mid[n, m, y sB + i, x sB + j] wB[o, m, i, j] + bB[o] (+ s[n, o, y, x]))
    """
    a, b = chain.convs
    N, C, H, W = a.batch, a.in_channels, a.height, a.width
    M, O = a.out_channels, b.out_channels
    (ka, _), (sa, _), (pa, _) = a.kernel, a.stride, a.padding
    (kb, _), (sb, _), (pb, _) = b.kernel, b.stride, b.padding
    HA, WA = a.out_height, a.out_width
    x = te.placeholder((N, C, H, W), F32, name="x")
    wa, ba = te.placeholder((M, C, ka, ka), F32, name="wa"), te.placeholder((M,), F32, name="ba")
    wb, bb = te.placeholder((O, M, kb, kb), F32, name="wb"), te.placeholder((O,), F32, name="bb")
    c, i, j = (te.reduce_axis((0, e), name=v) for e, v in ((C, "c"), (ka, "i"), (ka, "j")))
    zero = tirx.const(0.0, F32)

    def inside_a(yp, xp):  # a position of B's padded input that is an output of A
        return tirx.all(yp >= pb, yp < pb + HA, xp >= pb, xp < pb + WA)

    def x_at(n, c_, y, x_):  # x, zero outside (A's padding); the guard is lazy: x is read only inside
        return tirx.if_then_else(tirx.all(y >= 0, y < H, x_ >= 0, x_ < W), x[n, c_, y, x_], zero)

    padded = (N, M, HA + 2 * pb, WA + 2 * pb)
    expand = te.compute(padded, lambda n, m, yp, xp: te.sum(tirx.if_then_else(
        inside_a(yp, xp), x_at(n, c, (yp - pb) * sa + i - pa, (xp - pb) * sa + j - pa), zero) * wa[m, c, i, j],
        axis=[c, i, j]), name=EXPAND)
    mid = te.compute(padded, lambda n, m, yp, xp: tirx.if_then_else(
        inside_a(yp, xp), activate(expand[n, m, yp, xp] + ba[m], chain.activations[0]), zero), name=EXPAND_ACT)
    r, u, v = (te.reduce_axis((0, e), name=n_) for e, n_ in ((M, "r"), (kb, "u"), (kb, "v")))
    shape = (N, O, b.out_height, b.out_width)
    project = te.compute(shape, lambda n, o, y, x_: te.sum(
        mid[n, r, y * sb + u, x_ * sb + v] * wb[o, r, u, v], axis=[r, u, v]), name=PROJECT)
    skip = te.placeholder(shape, F32, name="skip") if chain.residual else None

    def output(n, o, y, x_):
        value = project[n, o, y, x_] + bb[o]
        return activate(value + skip[n, o, y, x_] if skip is not None else value, chain.out_activation)

    out = te.compute(shape, output, name=OUTPUT)
    return [x, wa, ba, wb, bb, *([skip] if skip is not None else []), out]


def prim_func(block) -> tirx.PrimFunc:
    """The block's unscheduled PrimFunc (``compute``), the workload ``schedule_cuda`` schedules."""
    return te.create_prim_func(compute(block))


def _largest_divisor(extent: int, at_most: int) -> int:
    return tiling.divisor_tile(extent, range(at_most, 0, -1))


def _tile(sch, loop, decision: list[int]):
    """(the loops, the sampled factors) of ``loop`` split by a sampled perfect tile whose default decision is
    ``decision`` (factors whose product is the extent)."""
    factors = sch.sample_perfect_tile(loop, n=len(decision), max_innermost_factor=int(sch.get(loop).extent),
                                      decision=decision)
    return sch.split(loop, factors), factors


def _bind_threads(sch, block, threads: list) -> None:
    """The loops ``compute_at`` gave a spatial block (its innermost, one per block variable) fused and spread
    over the block's threads, whose count is the product of ``threads`` (sampled factors: a tuned trace
    replays with its own decisions, so the count must not be a Python int taken from the defaults)."""
    spatial = sch.get_loops(block)[-len(sch.get(block).iter_vars):]
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    sch.bind(sch.fuse(*sch.split(fused, [None, *threads])[1:]), "threadIdx.x")


def _extents(sch, block) -> list[int]:
    """The extents of the block's spatial iteration variables (its output's shape, for the blocks here)."""
    return [int(iv.dom.extent) for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0]


def default_tiles(out_height: int, out_width: int, expanded: int, out_channels: int
                  ) -> tuple[int, int, int, int, int]:
    """(TH, TW, EC, OT, OB): the schedule's default decisions (module docstring) for a block's output map,
    expanded channels and output channels; OB thread blocks share a tile's output channels."""
    th, tw = _largest_divisor(out_height, MAX_TILE), _largest_divisor(out_width, MAX_TILE)
    ec = _largest_divisor(expanded, MAX_CHUNK)
    # OT divides EC too: the chunk's depthwise outputs (EC x TH x TW) then split evenly over the OT x TH x TW
    # threads; an uneven split leaves a guarded loop whose region TVM over-approximates (more channels of
    # the expansion computed than the chunk needs)
    groups = _largest_divisor(math.gcd(out_channels, ec), max(1, TARGET_THREADS // (th * tw)))
    # at most MAX_PER_THREAD accumulators per thread (more spill registers: 768 output channels in 4 groups
    # would be 192); the rest of the channels go to more thread blocks, each recomputing the intermediates
    # (small late-stage maps have few tiles anyway)
    per_thread = _largest_divisor(out_channels // groups, MAX_PER_THREAD)
    return th, tw, ec, groups, out_channels // (groups * per_thread)


def schedule_cuda(sch: tvm.s_tir.Schedule, func_name: str | None, target) -> None:
    """The design space of the module docstring, applied to the PrimFunc ``func_name`` (its default
    decisions: ``default_tiles``)."""
    if func_name is not None:
        sch.work_on(func_name)
    get = lambda name: sch.get_sblock(name, func_name)  # noqa: E731 - a short local alias
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root", func_name))}
    projects, depthwise = PROJECT in names, DEPTHWISE_ACT in names
    mid, expand = get(EXPAND_ACT), get(EXPAND)
    staged = get(DEPTHWISE_ACT) if depthwise else mid  # what the projection (or the output) reads
    _, expanded, oh, ow = _extents(sch, staged)
    out_channels = expanded
    if projects:
        _, out_channels, oh, ow = _extents(sch, get(OUTPUT))
    # the staged tile has a halo (a conv pair's A activations on B's padded grid): computed like the
    # depthwise stage's input, every thread a share of its elements
    haloed = depthwise or _extents(sch, mid)[2:] != [oh, ow]
    th, tw, ec, groups, blocks = default_tiles(oh, ow, expanded, out_channels)
    if projects:
        out, project = get(OUTPUT), get(PROJECT)
        n, o, y, x, r, *taps = sch.get_loops(project)  # a conv pair's B: its taps too
        (yo, yi), (_, th_) = _tile(sch, y, [oh // th, th])
        (xo, xi), (_, tw_) = _tile(sch, x, [ow // tw, tw])
        # output channels: [over the grid (recomputing the block's intermediates), threads, per thread]
        (ob, ot, orr), (_, ot_, _) = _tile(sch, o, [blocks, groups, out_channels // (blocks * groups)])
        (ro, ri), _ = _tile(sch, r, [expanded // ec, ec])
        sch.reorder(n, yo, xo, ob, ot, yi, xi, ro, ri, *taps, orr)
        sch.bind(sch.fuse(n, yo, xo, ob), "blockIdx.x")
        threads = sch.fuse(ot, yi, xi)
        sch.bind(threads, "threadIdx.x")
        sch.reverse_compute_at(out, threads, preserve_unit_loops=True)
        sch.decompose_reduction(project, ro)
        sch.set_scope(project, 0, "local")  # each thread's accumulators
        chunk, thread_factors = ro, [ot_, th_, tw_]
        # the chunk of what the projection reads in shared memory, computed by all threads (the scope
        # first: compute_at relaxes the thread-bound loops only for a shared buffer, so the region is the
        # whole thread block's, not one thread's)
        sch.set_scope(staged, 0, "shared")
        sch.compute_at(staged, chunk, preserve_unit_loops=True)
    else:  # the depthwise activations are the output: a chunk of channels x a tile per thread block
        n, e, y, x = sch.get_loops(staged)
        (yo, yi), (_, th_) = _tile(sch, y, [oh // th, th])
        (xo, xi), (_, tw_) = _tile(sch, x, [ow // tw, tw])
        (eo, ei), (_, ec_) = _tile(sch, e, [expanded // ec, ec])
        sch.reorder(n, eo, yo, xo, ei, yi, xi)
        chunk, thread_factors = sch.fuse(n, eo, yo, xo), [ec_, th_, tw_]
        sch.bind(chunk, "blockIdx.x")
    # each element's depthwise and expansion sums run in one thread's registers; each stage's loops are
    # spread over the block's threads, then the sums' initializations split off (after the binding, which
    # needs complete blocks; MetaSchedule's RewriteReductionBlock would do it, but the default schedule
    # runs without postprocessors, and that rewrite failed on some tile choices)
    if depthwise:
        dw_acc = get(DEPTHWISE)
        sch.compute_at(dw_acc, sch.get_loops(staged)[-1], preserve_unit_loops=True)
        sch.set_scope(dw_acc, 0, "local")
        sch.set_scope(mid, 0, "shared")
        sch.compute_at(mid, chunk, preserve_unit_loops=True)  # the chunk's expanded tile and its halo
    sch.compute_at(expand, sch.get_loops(mid)[-1], preserve_unit_loops=True)
    sch.set_scope(expand, 0, "local")
    if projects and not haloed:  # channels split by OT, then (OT x TH x TW) threads: affine, so mid's region is exact
        _, e, y, x = sch.get_loops(staged)[-4:]
        e_outer, e_inner = sch.split(e, [None, thread_factors[0]])
        sch.reorder(e_outer, e_inner, y, x)
        sch.bind(sch.fuse(e_inner, y, x), "threadIdx.x")
    elif not projects:
        sch.bind(sch.fuse(ei, yi, xi), "threadIdx.x")
    if haloed:
        _bind_threads(sch, mid, thread_factors)
    if depthwise:
        sch.decompose_reduction(dw_acc, sch.get_loops(dw_acc)[-2])
    reductions = sum(int(iv.iter_type) == 2 for iv in sch.get(expand).iter_vars)  # a pair's A: c, i, j
    sch.decompose_reduction(expand, sch.get_loops(expand)[-reductions])
