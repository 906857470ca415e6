"""The fused blocks on CUDA (passes/fuse_blocks.py): an inverted residual, expand 1x1 -> act -> depthwise kxk
-> act [-> project 1x1 [+ x]], a pointwise MLP, 1x1 -> act -> 1x1 [+ skip], or a conv pair (ResNet's basic
block, VGG / RepVGG pairs), act(B(a1(A(x))) [+ skip]), or a bottleneck (ResNet's), act(P(a2(B(a1(A(x)))))
[+ skip]), or ConvNeXt's whole block (its depthwise conv and channel norm before the MLP: ``_convnext_compute``,
``_schedule_head``), as one kernel whose intermediates live in shared memory, tile by tile.

Compute (NCHW, unpadded weights; the depthwise conv's padding p (top and left; ``InvertedResidual.pads``,
asymmetric after TF "SAME" padding's pad op), stride s and dilation r per axis, as the pass matched it;
``inside`` = the padded position is inside the map):

    mid[n, e, yp, xp] = a1(sum_c x[n, c, yp - p, xp - p] w1[e, c] + b1[e])  if inside(yp, xp), else 0
    dw[n, e, y, x]    = a2(sum_{i,j} mid[n, e, s y + r i, s x + r j] w2[e, i, j] + b2[e])
    out[n, o, y, x]   = sum_e dw[n, e, y, x] w3[o, e] + b3[o] (+ x[n, o, y, x])

(without a projection, the kind the pass makes where a squeeze-excite follows, ``out = dw``; a pointwise
MLP has no depthwise stage, p = 0, and projects ``mid``, + its skip, an argument of the kernel; a conv pair
computes A's activations as ``mid`` on B's padded grid and B as the projection, its sum over A's channels
and B's taps; a bottleneck's dense B takes the depthwise stage's place and P projects: ``_chain_compute``).

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
run inside one thread. A bottleneck's middle conv sums over all of A's channels, so A's activations are
computed once per thread block, every channel on the tile and its halo, into shared memory (``compute_at``
at the thread block's loop), and the chunks are of B's output channels: per chunk B's activations,
TH x TW x EC, then P's share. Its default tile is the largest (then squarest) whose two buffers fit 48 KB
(``SHARED_BYTES``): resnet50's seven bottleneck shapes take 8 x 8 (64 channels at 56 px, 29 KB), 4 x 4
(128, stride 2), 7 x 7 (128 at 28 px), 7 x 1 (256, stride 2: 46 KB), 7 x 2 (256 at 14 px) and 1 x 1 (512,
both: A recomputed on each pixel's 3 x 3 neighbourhood). The OB thread blocks that share a tile's output
channels each compute A and B for it (OB = 2 at 56 px, 4 at 7 px: there A runs 36 times over). ConvNeXt's
head is likewise computed once per thread block (``_schedule_head``), C + 2 floats a pixel. ``supports``
refuses a block whose one-pixel tile does not fit. Without a projection a thread block computes EC channels x the tile, one element
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
from .fused_chain import BOTTLENECK_KIND
from .fused_chain import KINDS as CHAIN_KINDS
from .fused_mlp import KIND as MLP_KIND
from .fused_mlp import MIXER_KIND, fold_norm

F32 = "float32"
KINDS = (KIND, PARTIAL_KIND, MLP_KIND, MIXER_KIND, *CHAIN_KINDS)  # the kinds this kernel runs
EXPAND, EXPAND_ACT, DEPTHWISE, DEPTHWISE_ACT, PROJECT, OUTPUT = (
    "fb_expand", "fb_expand_act", "fb_depthwise", "fb_depthwise_act", "fb_project", "fb_output")
MIXER_SUM, MIXER, MEAN, VARIANCE = "fb_mixer_sum", "fb_mixer", "fb_mean", "fb_variance"  # ConvNeXt's head
MAX_TILE = 8  # output rows / columns per thread block, by default
MAX_CHUNK = 16  # expanded channels per chunk, by default
TARGET_THREADS = 256  # threads per block the default channel groups aim for
MAX_PER_THREAD = 32  # output channels one thread accumulates, by default
SHARED_BYTES = 48 * 1024  # shared memory per thread block without opting in (every arch since sm_20)


def prepare_weights(block, *arrays) -> list[np.ndarray]:
    """The kernel's constants from the convs' OIHW weights and biases in order (a bias None: zeros):
    [w1 [E, C], b1 [E], w2 [E, k, k], b2 [E], (w3 [O, E], b3 [O])] for an inverted residual (w1, b1, w2, b2[,
    w3, b3] given), [w1 [E, C], b1 [E], w3 [O, E], b3 [O]] for a pointwise MLP (w1, b1, w3, b3 given), with
    ConvNeXt's head [wd [C, k, k], bd [C]] before them (given: wd, bd, the norm's scale and shift, w1, ...)."""
    if block.kind in CHAIN_KINDS:  # OIHW as they are: [wA [M, C, k, k], bA [M], wB [O, M, k, k], bB [O]] for a
        # pair; a bottleneck's [wA, bA, wB [M2, M, k, k], bB [M2], wP [O, M2], bP [O]]
        weights = []
        for spec, w, bias in zip(block.convs, arrays[::2], arrays[1::2]):
            w = np.asarray(w, np.float32)
            weights += [np.ascontiguousarray(w), padded_vector(bias, spec.out_channels)]
        if block.kind == BOTTLENECK_KIND:  # P is a matrix [O, M2]
            weights[4] = np.ascontiguousarray(weights[4].reshape(weights[4].shape[:2]))
        return weights
    E, C, O = block.expand.out_channels, block.expand.in_channels, block.out_channels
    if block.kind == MIXER_KIND:  # [wd, bd, the norm's scale and shift (None: none), w1, b1, w3, b3]
        wd, bd, scale, shift, w1, b1, w3, b3 = arrays
        k = block.mixer.kernel[0]
        w1, b1 = fold_norm(w1, b1, scale, shift)  # the norm's scale and shift folded into the expand
        weights = [np.asarray(wd, np.float32).reshape(C, k, k), padded_vector(bd, C), w1.astype(np.float32),
                   b1.astype(np.float32), np.asarray(w3, np.float32).reshape(O, E), padded_vector(b3, O)]
    elif block.kind == MLP_KIND:
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
    """The kernel's input and output shapes (NCHW; the skip of an MLP, a ConvNeXt block or a conv chain has the
    output's)."""
    e_, last = block.convs[0], block.convs[-1]
    return ((e_.batch, e_.in_channels, e_.height, e_.width),
            (e_.batch, block.out_channels, last.out_height, last.out_width))


def compute(block) -> list[te.Tensor]:
    """The kernel's arguments as TE tensors: x, the weights (``prepare_weights``), [the skip of an MLP, a ConvNeXt
    block or a conv chain with one], the output."""
    if block.kind in CHAIN_KINDS:
        return _chain_compute(block)
    e_ = block.expand
    N, C, H, W = e_.batch, e_.in_channels, e_.height, e_.width
    E, O = e_.out_channels, block.out_channels
    x = te.placeholder((N, C, H, W), F32, name="x")
    w1, b1 = te.placeholder((E, C), F32, name="w1"), te.placeholder((E,), F32, name="b1")
    c = te.reduce_axis((0, C), name="c")
    if block.kind == MIXER_KIND:
        return _convnext_compute(block, x, w1, b1, c)
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

    def output(n, o, y, x_):  # + the activation after an inverted residual block (fused_block.py), if any
        value = project[n, o, y, x_] + b3[o]
        value = value + skip[n, o, y, x_] if skip is not None else value
        return activate(value, getattr(block, "out_activation", "none"))

    out = te.compute(shape, output, name=OUTPUT)
    own_skip = [skip] if skip is not None and block.kind in (MLP_KIND, MIXER_KIND) else []  # an argument
    return [w3, b3, *own_skip, out]


def _zero_outside(x: te.Tensor, H: int, W: int):
    """x[n, c, y, x], 0 outside the H x W map (a conv's padding); the guard is lazy: x is read only inside."""
    zero = tirx.const(0.0, F32)
    return lambda n, c, y, x_: tirx.if_then_else(tirx.all(y >= 0, y < H, x_ >= 0, x_ < W), x[n, c, y, x_], zero)


def _convnext_compute(block, x, w1, b1, c) -> list[te.Tensor]:
    """ConvNeXt's whole block (kind MIXER_KIND): its depthwise conv d, the norm over each pixel's channels
    (mean, then the variance of the differences, as PyTorch computes it; its scale and shift are in w1, b1),
    then the MLP, + the skip (the block's input):

        d[n, c, y, x]   = sum_{i,j} x[n, c, y + i - p, x + j - p] wd[c, i, j] + bd[c]     (0 outside the map)
        mean[n, y, x]   = sum_c d[n, c, y, x],   var[n, y, x] = sum_c (d[n, c, y, x] - mean / C)^2
        mid[n, e, y, x] = act(sum_c (d[n, c, y, x] - mean / C) w1[e, c] / sqrt(var / C + eps) + b1[e])
        out[n, o, y, x] = sum_e mid[n, e, y, x] w3[o, e] + b3[o] + skip[n, o, y, x]

    (the norm's 1 / sqrt applied after the expand's sum over c, where it is one multiply per element)."""
    m = block.mixer
    N, C, H, W = m.batch, m.in_channels, m.height, m.width
    E, k = block.expand.out_channels, m.kernel[0]
    p = k // 2
    assert m.padding == (p, p) and m.stride == (1, 1) and m.dilation == (1, 1), "fuse_blocks matches only these"
    wd, bd = te.placeholder((C, k, k), F32, name="wd"), te.placeholder((C,), F32, name="bd")
    i, j = te.reduce_axis((0, k), name="i"), te.reduce_axis((0, k), name="j")
    inverse = tirx.const(1.0 / C, F32)
    x_at = _zero_outside(x, H, W)
    mixer_sum = te.compute((N, C, H, W), lambda n, c_, y, x_: te.sum(
        x_at(n, c_, y + i - p, x_ + j - p) * wd[c_, i, j], axis=[i, j]), name=MIXER_SUM)
    d = te.compute((N, C, H, W), lambda n, c_, y, x_: mixer_sum[n, c_, y, x_] + bd[c_], name=MIXER)
    skip = te.placeholder((N, block.out_channels, H, W), F32, name="skip") if block.residual else None
    if not block.norm:  # InceptionNeXt's mixer: its BatchNorm is in w1, b1
        expand = te.compute((N, E, H, W), lambda n, e, y, x_: te.sum(d[n, c, y, x_] * w1[e, c], axis=c), name=EXPAND)
        mid = te.compute((N, E, H, W), lambda n, e, y, x_: activate(expand[n, e, y, x_] + b1[e], block.activation),
                         name=EXPAND_ACT)
        return [x, wd, bd, w1, b1, *_projection(block, mid, skip, (N, block.out_channels, H, W))]
    cm, cv = te.reduce_axis((0, C), name="cm"), te.reduce_axis((0, C), name="cv")
    mean = te.compute((N, H, W), lambda n, y, x_: te.sum(d[n, cm, y, x_], axis=cm), name=MEAN)

    def squared_difference(n, y, x_):
        difference = d[n, cv, y, x_] - mean[n, y, x_] * inverse
        return te.sum(difference * difference, axis=cv)

    variance = te.compute((N, H, W), squared_difference, name=VARIANCE)
    expand = te.compute((N, E, H, W), lambda n, e, y, x_: te.sum(
        (d[n, c, y, x_] - mean[n, y, x_] * inverse) * w1[e, c], axis=c), name=EXPAND)
    eps = tirx.const(block.eps, F32)
    mid = te.compute((N, E, H, W), lambda n, e, y, x_: activate(
        expand[n, e, y, x_] * tirx.rsqrt(variance[n, y, x_] * inverse + eps) + b1[e], block.activation),
        name=EXPAND_ACT)
    return [x, wd, bd, w1, b1, *_projection(block, mid, skip, (N, block.out_channels, H, W))]


def _chain_compute(chain) -> list[te.Tensor]:
    """A conv pair or a bottleneck (schedules/fused_chain.py): A's activations on B's padded input grid, then
    B as the "projection" (its sum over A's channels and B's taps), + the skip, the last activation:

        mid[n, m, yp, xp] = a1(sum_{c,i,j} x[n, c, (yp - pB) sA + i - pA, (xp - pB) sA + j - pA] wA[m, c, i, j]
                               + bA[m])    where (yp - pB, xp - pB) is inside A's output, else 0
        out[n, o, y, x]   = act(sum_{m,i,j} mid[n, m, y sB + i, x sB + j] wB[o, m, i, j] + bB[o] (+ s[n, o, y, x]))

    A bottleneck's B is its middle stage (the depthwise stage's names: a dense k x k sum over all of A's
    channels, then a2) and its 1x1 P the projection:

        mid2[n, e, y, x] = a2(sum_{m,i,j} mid[n, m, y sB + i, x sB + j] wB[e, m, i, j] + bB[e])
        out[n, o, y, x]  = act(sum_e mid2[n, e, y, x] wP[o, e] + bP[o] (+ s[n, o, y, x]))
    """
    a, b = chain.convs[:2]
    N, C, H, W = a.batch, a.in_channels, a.height, a.width
    M, O = a.out_channels, chain.out_channels
    (ka, _), (sa, _), (pa, _) = a.kernel, a.stride, a.padding
    (kb, _), (sb, _), (pb, _) = b.kernel, b.stride, b.padding
    HA, WA = a.out_height, a.out_width
    x = te.placeholder((N, C, H, W), F32, name="x")
    wa, ba = te.placeholder((M, C, ka, ka), F32, name="wa"), te.placeholder((M,), F32, name="ba")
    wb, bb = (te.placeholder((b.out_channels, M, kb, kb), F32, name="wb"),
              te.placeholder((b.out_channels,), F32, name="bb"))
    c, i, j = (te.reduce_axis((0, e), name=v) for e, v in ((C, "c"), (ka, "i"), (ka, "j")))
    zero = tirx.const(0.0, F32)

    def inside_a(yp, xp):  # a position of B's padded input that is an output of A
        return tirx.all(yp >= pb, yp < pb + HA, xp >= pb, xp < pb + WA)

    x_at = _zero_outside(x, H, W)  # A's padding

    padded = (N, M, HA + 2 * pb, WA + 2 * pb)
    expand = te.compute(padded, lambda n, m, yp, xp: te.sum(tirx.if_then_else(
        inside_a(yp, xp), x_at(n, c, (yp - pb) * sa + i - pa, (xp - pb) * sa + j - pa), zero) * wa[m, c, i, j],
        axis=[c, i, j]), name=EXPAND)
    mid = te.compute(padded, lambda n, m, yp, xp: tirx.if_then_else(
        inside_a(yp, xp), activate(expand[n, m, yp, xp] + ba[m], chain.activations[0]), zero), name=EXPAND_ACT)
    r, u, v = (te.reduce_axis((0, e), name=n_) for e, n_ in ((M, "r"), (kb, "u"), (kb, "v")))
    shape_b = (N, b.out_channels, b.out_height, b.out_width)
    shape = (N, O, b.out_height, b.out_width)
    weights = [wa, ba, wb, bb]
    if chain.kind == BOTTLENECK_KIND:
        middle = te.compute(shape_b, lambda n, e, y, x_: te.sum(
            mid[n, r, y * sb + u, x_ * sb + v] * wb[e, r, u, v], axis=[r, u, v]), name=DEPTHWISE)
        middle_act = te.compute(shape_b, lambda n, e, y, x_: activate(middle[n, e, y, x_] + bb[e],
                                                                        chain.activations[1]), name=DEPTHWISE_ACT)
        wp, bp = te.placeholder((O, b.out_channels), F32, name="wp"), te.placeholder((O,), F32, name="bp")
        q = te.reduce_axis((0, b.out_channels), name="q")
        project = te.compute(shape, lambda n, o, y, x_: te.sum(middle_act[n, q, y, x_] * wp[o, q], axis=q),
                             name=PROJECT)
        weights, last_bias = weights + [wp, bp], bp
    else:
        project = te.compute(shape, lambda n, o, y, x_: te.sum(
            mid[n, r, y * sb + u, x_ * sb + v] * wb[o, r, u, v], axis=[r, u, v]), name=PROJECT)
        last_bias = bb
    skip = te.placeholder(shape, F32, name="skip") if chain.residual else None

    def output(n, o, y, x_):
        value = project[n, o, y, x_] + last_bias[o]
        return activate(value + skip[n, o, y, x_] if skip is not None else value, chain.out_activation)

    out = te.compute(shape, output, name=OUTPUT)
    return [x, *weights, *([skip] if skip is not None else []), out]


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
    """The loops ``compute_at`` gave a block (its innermost, one per block variable; a reduction's own loops
    left inside) fused and spread over the block's threads, whose count is the product of ``threads`` (sampled factors: a tuned trace
    replays with its own decisions, so the count must not be a Python int taken from the defaults)."""
    iter_vars = sch.get(block).iter_vars
    reductions = sum(int(iv.iter_type) == 2 for iv in iter_vars)  # a reduction's own loops stay in the thread
    loops = sch.get_loops(block)[-len(iter_vars):]
    spatial = loops[:len(loops) - reductions]
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    sch.bind(sch.fuse(*sch.split(fused, [None, *threads])[1:]), "threadIdx.x")


def _extents(sch, block) -> list[int]:
    """The extents of the block's spatial iteration variables (its output's shape, for the blocks here)."""
    return [int(iv.dom.extent) for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0]


def default_tiles(out_height: int, out_width: int, expanded: int, out_channels: int,
                  resident: tuple[int, int, int] | None = None) -> tuple[int, int, int, int, int]:
    """(TH, TW, EC, OT, OB): the schedule's default decisions (module docstring) for a block's output map,
    expanded channels and output channels; OB thread blocks share a tile's output channels. ``resident``:
    (channels, kernel, stride) of a stage kept whole for the tile and its halo (a bottleneck's A; ConvNeXt's
    d with its mean and variance: channels + 2, no halo), whose
    shared buffer, with the chunk's, must fit ``SHARED_BYTES``: the largest such tile (ValueError if none)."""
    ec = _largest_divisor(expanded, MAX_CHUNK)
    th, tw = _largest_divisor(out_height, MAX_TILE), _largest_divisor(out_width, MAX_TILE)
    if resident is not None:
        channels, k, s = resident

        def shared_bytes(th_, tw_):
            return 4 * (channels * ((th_ - 1) * s + k) * ((tw_ - 1) * s + k) + ec * th_ * tw_)

        fitting = [(th_ * tw_, min(th_, tw_), th_, tw_)
                   for th_ in range(1, MAX_TILE + 1) if out_height % th_ == 0
                   for tw_ in range(1, MAX_TILE + 1) if out_width % tw_ == 0 and shared_bytes(th_, tw_) <= SHARED_BYTES]
        if not fitting:
            raise ValueError(f"{channels} floats a pixel (on a {k}x{k} window) do not fit {SHARED_BYTES} bytes of "
                             f"shared memory even for a one-pixel tile")
        *_, th, tw = max(fitting)  # the most pixels, then the squarest (the least halo)
    # OT divides EC too: the chunk's depthwise outputs (EC x TH x TW) then split evenly over the OT x TH x TW
    # threads; an uneven split leaves a guarded loop whose region TVM over-approximates (more channels of
    # the expansion computed than the chunk needs)
    groups = _largest_divisor(math.gcd(out_channels, ec), max(1, TARGET_THREADS // (th * tw)))
    # at most MAX_PER_THREAD accumulators per thread (more spill registers: 768 output channels in 4 groups
    # would be 192); the rest of the channels go to more thread blocks, each recomputing the intermediates
    # (small late-stage maps have few tiles anyway)
    per_thread = _largest_divisor(out_channels // groups, MAX_PER_THREAD)
    return th, tw, ec, groups, out_channels // (groups * per_thread)


def supports(block) -> str | None:
    """None when this kernel runs ``block`` with its default schedule, else why not (a bottleneck whose first
    conv's activations, for a one-pixel tile and its halo, or a ConvNeXt head whose channels for one pixel,
    exceed the shared memory)."""
    if block.kind not in KINDS:
        return f"no CUDA kernel for {block.kind} blocks"
    try:
        if block.kind == BOTTLENECK_KIND:
            a, b, p = block.convs
            default_tiles(b.out_height, b.out_width, b.out_channels, p.out_channels,
                          (a.out_channels, b.kernel[0], b.stride[0]))
        elif block.kind == MIXER_KIND:
            e_ = block.expand
            default_tiles(e_.height, e_.width, e_.out_channels, block.out_channels, (e_.in_channels + 2, 1, 1))
    except ValueError as error:
        return f"{block.kind} block of {block.convs[0].describe()}: {error}"
    return None


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
    # a bottleneck's middle conv is dense (its sum runs over A's channels too): A's activations are computed
    # once per tile, all channels with the halo, before the chunks of the middle conv's outputs
    dense_middle = depthwise and sum(int(iv.iter_type) == 2 for iv in sch.get(get(DEPTHWISE)).iter_vars) == 3
    mixing = MIXER in names  # ConvNeXt's head: d, its mean and variance, every channel, once per tile
    resident = None
    if mixing:  # (no halo: the depthwise conv reads x from global memory; + 2 for the mean and the variance)
        resident = (_extents(sch, get(MIXER))[1] + 2, 1, 1)
    if dense_middle:
        _, channels, padded_height, _ = _extents(sch, mid)
        k = int(sch.get(get(DEPTHWISE)).iter_vars[-1].dom.extent)
        resident = (channels, k, 1 if padded_height - k + 1 == oh else 2)
    th, tw, ec, groups, blocks = default_tiles(oh, ow, expanded, out_channels, resident)
    if projects:
        out, project = get(OUTPUT), get(PROJECT)
        n, o, y, x, r, *taps = sch.get_loops(project)  # a conv pair's B: its taps too
        (yo, yi), (_, th_) = _tile(sch, y, [oh // th, th])
        (xo, xi), (_, tw_) = _tile(sch, x, [ow // tw, tw])
        # output channels: [over the grid (recomputing the block's intermediates), threads, per thread]
        (ob, ot, orr), (_, ot_, _) = _tile(sch, o, [blocks, groups, out_channels // (blocks * groups)])
        (ro, ri), _ = _tile(sch, r, [expanded // ec, ec])
        sch.reorder(n, yo, xo, ob, ot, yi, xi, ro, ri, *taps, orr)
        grid = sch.fuse(n, yo, xo, ob)
        sch.bind(grid, "blockIdx.x")
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
        # the chunk's expanded tile and its halo; a bottleneck's A: every channel, once per tile
        sch.compute_at(mid, grid if dense_middle else chunk, preserve_unit_loops=True)
    sch.compute_at(expand, sch.get_loops(mid)[-1], preserve_unit_loops=True)
    sch.set_scope(expand, 0, "local")
    if projects and (depthwise or not haloed):
        # what the projection reads, EC x TH x TW: its channels split by OT, then (OT x TH x TW) threads, each a
        # share of the elements (affine, so the regions of the stages before it stay exact)
        _, e, y, x = sch.get_loops(staged)[-4:]
        e_outer, e_inner = sch.split(e, [None, thread_factors[0]])
        sch.reorder(e_outer, e_inner, y, x)
        sch.bind(sch.fuse(e_inner, y, x), "threadIdx.x")
    elif not projects:
        sch.bind(sch.fuse(ei, yi, xi), "threadIdx.x")
    if haloed:
        _bind_threads(sch, mid, thread_factors)
    if depthwise:
        sch.decompose_reduction(dw_acc, sch.get_loops(dw_acc)[-3 if dense_middle else -2])
    reductions = sum(int(iv.iter_type) == 2 for iv in sch.get(expand).iter_vars)  # a pair's A: c, i, j
    sch.decompose_reduction(expand, sch.get_loops(expand)[-reductions])
    if mixing:
        _schedule_head(sch, get, grid, thread_factors, names)


def _schedule_head(sch, get, grid, thread_factors: list, names) -> None:
    """ConvNeXt's head, once per tile before the chunks: d (every channel of the tile) and its mean and
    variance (InceptionNeXt's: d alone) in shared memory, computed at the thread block's loop (the consumers
    first: compute_at needs every consumer of a block under the loop), each spread over the threads, each
    sum in one thread."""
    stages = [name for name in (VARIANCE, MEAN, MIXER) if name in names]
    for name in stages:
        stage = get(name)
        sch.set_scope(stage, 0, "shared")
        sch.compute_at(stage, grid, preserve_unit_loops=True)
    mixer_sum = get(MIXER_SUM)
    sch.compute_at(mixer_sum, sch.get_loops(get(MIXER))[-1], preserve_unit_loops=True)
    sch.set_scope(mixer_sum, 0, "local")
    for name in stages:
        _bind_threads(sch, get(name), thread_factors)
    sch.decompose_reduction(mixer_sum, sch.get_loops(mixer_sum)[-2])
    for name in stages[:-1]:
        sch.decompose_reduction(get(name), sch.get_loops(get(name))[-1])
