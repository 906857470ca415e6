"""The fused pointwise MLP kernel (passes/fuse_blocks.py): 1x1 expand -> act -> 1x1 project [+ skip] as one
PrimFunc whose expanded intermediate (E channels, typically 4x the block's) never leaves the cache. This is
the channel MLP of ConvNeXt, InceptionNeXt, PoolFormer/MetaFormer, RepViT and FastViT blocks; its skip is
any tensor of the output's shape (in ConvNeXt the block's input). With ConvNeXt's depthwise conv and norm
before it, the kernel runs the whole block (below).

Compute, with E' and O' the channels rounded up to the SIMD width (zero weights; every supported activation
maps 0 to 0, so a padded channel stays 0):

    mid[n, y, x, e]  = act(sum_c x[n, c, y, x] w1[c, e] + b1[e])
    out[n, o, y, x]  = sum_e mid[n, y, x, e] w3[e, o] + b3[o] (+ skip[n, o, y, x])

Loop structure (``prim_func``): the rows are cut into bands, one per parallel iteration (one per core); a
band walks its rows, and each row goes through a channels-last row buffer [W, E'] (W E' floats: 36 KB for
160 channels at 56 px, in L1/L2), then the projection's row [W, O'], stored in the output's layout. Both
stages run as register tiles of ``fused_space.column_tile`` columns x one or two channel vectors (the rule
the inverted residual kernel uses), the expand's bias added per tile and its activation in a pass over
the row (GELU's polynomial inside the tile spilled the accumulators), the projection's bias and the skip
where the row is stored. Unlike the separate convs, the intermediate is never stored: the unfused expand
writes and the projection reads E H W floats each. Each row streams both weight matrices once per column
tile of the row, from L2 where they fit there; where they don't (wide late stages) that costs more than the
intermediate saves, and the cost model (cost/fused.py, which counts one read per row there) declines such
blocks.

With a token mixer (kind ``convnext_block``): ConvNeXt's whole block, a depthwise kxk conv and a norm over
each pixel's channels (timm's LayerNorm2d) before the MLP, the skip being the block's input:

    d[n, y, x, c]   = sum_{i,j} x[n, c, y + i - p, x + j - p] wd[i, j, c] + bd[c]
    u[n, y, x, c]   = (d[n, y, x, c] - mean_c d) / sqrt(var_c d + eps)      (the norm's scale and shift are
    mid, out        as above, with u for x                                    folded into w1 and b1)

(InceptionNeXt's mixer, ``norm`` False: its branches as one k x k depthwise conv, zero taps included, and
u = d: its BatchNorm is folded into w1 and b1 by fold_conv_bn.)

A band keeps the k input rows its depthwise conv reads in a zero-padded channels-last ring [k, W + 2p, C']
(its first row copies k rows in, each next one the one row it adds; channels-last so the conv is the same
register tile over channel vectors), convolves them into a row [W, C'], and normalizes each pixel of it
(two passes over its channels as lane-wise sums: the mean, then the variance of the differences, as
PyTorch computes it); the expand then reads that row. So the depthwise output and the norm's never leave
the cache either.

Written out in TVMScript for the same reason as schedules/fused_block.py; like it, its design space is its
generator's parameters (fused_space.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from . import tiling
from .activations import activate
from .conv_spec import ConvSpec
from .fused_block import SUPPORTED_ACTIVATIONS, compiled_alone, padded_vector, round_up
from .fused_space import DEFAULT, Tiles, bands_of, channel_vectors, column_tile

F32, I32 = "float32", "int32"
KIND = "pointwise_mlp"
MIXER_KIND = "convnext_block"  # the MLP with a token mixer before it (ConvNeXt's, InceptionNeXt's)
MAX_MIXER_KERNEL = 11  # InceptionNeXt's band convs are 1 x 11 and 11 x 1


@dataclass(frozen=True)
class PointwiseMLP:
    """A matched block: its nodes in order and what the kernel needs to know."""

    nodes: tuple  # the IR nodes [dw, norm,] fc1, act, fc2[, add] (empty when built from shapes alone)
    expand: ConvSpec
    project: ConvSpec
    activation: str
    residual: bool  # + skip, the add's other operand (any tensor of the output's type)
    mixer: ConvSpec | None = None  # the depthwise conv before the norm (kind MIXER_KIND), else None
    eps: float = 0.0  # the norm's
    # the mixer's output normalized over each pixel's channels (ConvNeXt's LayerNorm2d); False: InceptionNeXt's
    # mixer (its branches as one k x k depthwise conv; its BatchNorm is folded into the expand)
    norm: bool = True
    mixer_taps: int = 0  # the mixer's taps the kernel computes (InceptionNeXt's: the branches' union); 0: k x k

    @property
    def kind(self) -> str:
        return KIND if self.mixer is None else MIXER_KIND

    @property
    def out_channels(self) -> int:
        return self.project.out_channels

    @property
    def convs(self) -> tuple[ConvSpec, ...]:
        return (self.expand, self.project) if self.mixer is None else (self.mixer, self.expand, self.project)

    @classmethod
    def of(cls, C: int, E: int, O: int, H: int, W: int, activation: str = "gelu", residual: bool = True,
           batch: int = 1, mixer_kernel: int | None = None, norm: bool = True) -> "PointwiseMLP":
        """A block from its shape alone (calibration, tests); ``mixer_kernel``: with ConvNeXt's depthwise conv
        of that size and (``norm``) its norm."""
        mixer = None if mixer_kernel is None else ConvSpec(
            batch, C, H, W, C, (mixer_kernel, mixer_kernel), padding=(mixer_kernel // 2, mixer_kernel // 2), groups=C)
        return cls((), ConvSpec(batch, C, H, W, E, (1, 1)), ConvSpec(batch, E, H, W, O, (1, 1)), activation, residual,
                   mixer, 1e-6 if mixer is not None and norm else 0.0, norm)


def supports(block: PointwiseMLP) -> str | None:
    """None when the kernel computes ``block``, else why not."""
    if block.activation.partition(":")[0] not in SUPPORTED_ACTIVATIONS:
        return f"activation {block.activation}: the kernel pads channels, which needs act(0) = 0"
    m = block.mixer
    if m is not None and (m.kernel[0] > MAX_MIXER_KERNEL or m.stride != (1, 1) or m.out_channels != m.in_channels):
        return f"a token mixer: a depthwise conv up to {MAX_MIXER_KERNEL}x{MAX_MIXER_KERNEL}, stride 1"
    return None


def prepare_weights(block: PointwiseMLP, *arrays, lanes: int) -> list[np.ndarray]:
    """The kernel's constants [wd [k, k, C'], bd [C'], taps [k, k], w1 [C, E'], b1 [E'], w3 [E', O'], b3 [O']]
    from the arrays: with a mixer its weight, bias, the norm's scale and shift, then each conv's OIHW weight
    and bias (None: no bias, no scale or shift). Without a mixer wd, bd and taps are unused 1-element
    arrays. taps[i, j] is 0 where every channel's weight is 0 (InceptionNeXt's branches as one k x k conv:
    the kernel skips those taps). The norm's scale and shift are folded into the expand: w1 diag(g) and
    b1 + w1 s."""
    C, E, O = block.expand.in_channels, block.expand.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    if block.mixer is not None:
        wd, bd, scale, shift, w1, b1, w3, b3 = arrays
        k = block.mixer.kernel[0]
        wd_ = np.zeros((k, k, round_up(C, lanes)), np.float32)
        wd_[:, :, :C] = np.asarray(wd, np.float32).reshape(C, k, k).transpose(1, 2, 0)
        taps = np.any(wd_ != 0, axis=2).astype(np.int32)
        mixer = [wd_, padded_vector(bd, round_up(C, lanes)), taps]
        w1, b1 = fold_norm(w1, b1, scale, shift)
    else:
        w1, b1, w3, b3 = arrays
        mixer = [np.zeros((1, 1, 1), np.float32), np.zeros(1, np.float32), np.ones((1, 1), np.int32)]
    w1_ = np.zeros((C, Ep), np.float32)
    w1_[:, :E] = np.asarray(w1, np.float32).reshape(E, C).T
    w3_ = np.zeros((Ep, Op), np.float32)
    w3_[:E, :O] = np.asarray(w3, np.float32).reshape(O, E).T
    return mixer + [w1_, padded_vector(b1, Ep), w3_, padded_vector(b3, Op)]


def fold_norm(w1, b1, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """(w1 diag(scale), b1 + w1 shift) in float64: the expand [E, C(, 1, 1)] of a normalized input u' = u scale +
    shift as the expand of u (a bias, scale or shift None: none)."""
    w1 = np.asarray(w1, np.float64).reshape(len(w1), -1)
    b1 = (np.zeros(len(w1)) if b1 is None else np.asarray(b1, np.float64)) + (0 if shift is None else w1 @ shift)
    return (w1 if scale is None else w1 * np.asarray(scale, np.float64)[None, :]), b1


def default_bands(block: PointwiseMLP, cores: int = 1) -> int:
    """Bands per image: one per core left after the batch's images, at most one per row."""
    return max(1, min(block.expand.height, -(-cores // block.expand.batch)))


def io_shapes(block: PointwiseMLP, lanes: int, in_block: bool = False, out_block: bool = False
              ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stored shapes of the kernel's input and output (the skip is stored like the output)."""
    e_ = block.expand
    N, C, O, H, W = e_.batch, e_.in_channels, block.out_channels, e_.height, e_.width
    x = (N, C // lanes, H, W, lanes) if in_block else (N, C, H, W)
    out = (N, O // lanes, H, W, lanes) if out_block else (N, O, H, W)
    return x, out


def plan(block: PointwiseMLP, lanes: int, bands: int = 1, tiles: Tiles = DEFAULT) -> tuple[int, ...]:
    """The kernel's tiles at point ``tiles`` of its space (fused_space.py) given the rule's ``bands``: rows
    per band, channel vectors per tile (expand, project), columns per tile (expand, project, the mixer's
    depthwise conv: 1 without one)."""
    e_ = block.expand
    Ep, Op = round_up(e_.out_channels, lanes), round_up(block.out_channels, lanes)
    th = -(-e_.height // bands_of(bands, e_.height, tiles))
    ev, ov = (channel_vectors(v // lanes, tiles.vectors, lanes) for v in (Ep, Op))
    most = tiles.columns
    return (th, ev, ov, column_tile(e_.width, lanes, ev, most), column_tile(e_.width, lanes, ov, most),
            column_tile(e_.width, lanes, 1, most) if block.mixer is not None else 1)


def prim_func(block: PointwiseMLP, lanes: int, bands: int = 1, *, in_block: bool = False, out_block: bool = False,
              skip_block: bool = False, tiles: Tiles = DEFAULT) -> tirx.PrimFunc:
    """The block's kernel: arguments x, wd, bd, taps, w1, b1, w3, b3 (``prepare_weights``), skip and out. ``in_block`` /
    ``skip_block`` / ``out_block``: that tensor stored in channel blocks of ``lanes``, [N, C/lanes, H, W,
    lanes] (passes/block_layout.py). Without a residual, skip is an unused 1-element buffer. ``bands``: the
    rule's bands per image (``default_bands``); ``tiles``: the point of the kernel's space (fused_space.py)."""
    e_ = block.expand
    N, C, H, W = e_.batch, e_.in_channels, e_.height, e_.width
    E, O = e_.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    th, ev, ov, rx, px, dx = plan(block, lanes, bands, tiles)  # rows per band; a register tile's vectors, columns
    B = -(-H // th)
    act, residual = block.activation, block.residual
    EV, OV = Ep // lanes, Op // lanes  # channel vectors
    XT, PXT, DXT = -(-W // rx), -(-W // px), -(-W // dx)
    zero = tirx.const(0.0, F32)
    x_shape, out_shape = io_shapes(block, lanes, in_block, out_block)
    skip_shape = io_shapes(block, lanes, False, skip_block)[1] if residual else (1,)
    mixing = block.mixer is not None
    normalizing = mixing and block.norm
    Cp = round_up(C, lanes)
    kd = block.mixer.kernel[0] if mixing else 1
    pd = kd // 2
    wd_shape, bd_shape = ((kd, kd, Cp), (Cp,)) if mixing else ((1, 1, 1), (1,))  # unused without a mixer
    win_shape, mixed_shape = ((kd, W + 2 * pd, Cp), (W, Cp)) if mixing else ((1, 1, 1), (1, 1))
    eps = tirx.const(block.eps, F32)
    cu, eu = tiling.reduction_unroll(C), tiling.reduction_unroll(Ep)  # the 1x1s' channels unrolled by a few

    def load(buffer, blocked, n, c, y, x_):  # buffer[n, c, y, x_] in either layout
        return buffer[n, c // lanes, y, x_, c % lanes] if blocked else buffer[n, c, y, x_]

    def source(x, mixed, n, c, y, x_):  # the expand's input: x, or the mixer's normalized row
        return mixed[x_, c] if mixing else load(x, in_block, n, c, y, x_)

    @T.prim_func(s_tir=False)
    def fused(x: T.Buffer(x_shape, F32), wd: T.Buffer(wd_shape, F32), bd: T.Buffer(bd_shape, F32),
              taps: T.Buffer(wd_shape[:2], I32),
              w1: T.Buffer((C, Ep), F32), b1: T.Buffer((Ep,), F32), w3: T.Buffer((Ep, Op), F32),
              b3: T.Buffer((Op,), F32), skip: T.Buffer(skip_shape, F32), out: T.Buffer(out_shape, F32)):
        T.func_attr({"tirx.noalias": True})
        for nb in T.parallel(N * B):  # one band of one image per iteration
            mid = T.alloc_buffer((W, Ep), F32)  # one row of act(expand), channels-last
            proj_row = T.alloc_buffer((W, Op), F32)
            acc = T.alloc_buffer((max(rx, px, dx), max(2, ev, ov), lanes), F32, scope="local")  # a register tile
            win = T.alloc_buffer(win_shape, F32)  # a ring of the input rows the mixer's conv reads, channels-last
            mixed = T.alloc_buffer(mixed_shape, F32)  # one row of the mixer's normalized output
            part = T.alloc_buffer((lanes,), F32, scope="local")  # a pixel's sums, one per lane
            stat = T.alloc_buffer((2,), F32, scope="local")  # a pixel's mean, then 1 / its deviation
            if mixing:
                for i, xx, c in T.grid(kd, W + 2 * pd, Cp):  # padding columns and channels: never written again
                    win[i, xx, c] = zero
            for t in range(th):
                if nb % B * th + t < H:
                    if mixing:
                        for j in range(kd):  # the band's first row fills the ring (input row r at slot (r + p) mod
                            if T.Or(t == 0, j == kd - 1):  # k), each next one adds the row p below it
                                if T.And(nb % B * th + t + j >= pd, nb % B * th + t + j < H + pd):
                                    for c, xx in T.grid(C, W):
                                        win[(nb % B * th + t + j) % kd, pd + xx, c] = load(
                                            x, in_block, nb // B, c, nb % B * th + t + j - pd, xx)
                                else:
                                    for xx, c in T.grid(W, C):
                                        win[(nb % B * th + t + j) % kd, pd + xx, c] = zero
                        for xo, co in T.grid(DXT, Cp // lanes):  # the depthwise conv, one row
                            for xi in T.unroll(dx):
                                for ci in T.vectorized(lanes):
                                    acc[xi, 0, ci] = zero
                            for i, j in T.grid(kd, kd):
                                if taps[i, j] != 0:  # (a tap whose weights are all 0 is skipped)
                                    for xi in T.unroll(dx):
                                        for ci in T.vectorized(lanes):
                                            if xo * dx + xi < W:
                                                acc[xi, 0, ci] = acc[xi, 0, ci] + win[
                                                    (nb % B * th + t + i) % kd, xo * dx + xi + j, co * lanes + ci
                                                ] * wd[i, j, co * lanes + ci]
                            for xi in T.unroll(dx):
                                for ci in T.vectorized(lanes):
                                    if xo * dx + xi < W:
                                        mixed[xo * dx + xi, co * lanes + ci] = acc[xi, 0, ci] + bd[co * lanes + ci]
                    if normalizing:
                        for xx in range(W):  # the norm over each pixel's C channels (padded ones are 0): the
                            for ci in T.vectorized(lanes):  # mean, then the deviation, as lane sums
                                part[ci] = zero
                            for cv in range(Cp // lanes):
                                for ci in T.vectorized(lanes):
                                    part[ci] = part[ci] + mixed[xx, cv * lanes + ci]
                            stat[0] = zero
                            for ci in range(lanes):
                                stat[0] = stat[0] + part[ci]
                            stat[0] = stat[0] / T.float32(C)
                            for ci in T.vectorized(lanes):
                                part[ci] = zero
                            for cv in range(Cp // lanes):
                                for ci in T.vectorized(lanes):
                                    part[ci] = part[ci] + T.if_then_else(
                                        cv * lanes + ci < C, (mixed[xx, cv * lanes + ci] - stat[0])
                                        * (mixed[xx, cv * lanes + ci] - stat[0]), zero)
                            stat[1] = zero
                            for ci in range(lanes):
                                stat[1] = stat[1] + part[ci]
                            stat[1] = T.float32(1.0) / T.sqrt(stat[1] / T.float32(C) + eps)
                            for cv in range(Cp // lanes):
                                for ci in T.vectorized(lanes):
                                    mixed[xx, cv * lanes + ci] = (mixed[xx, cv * lanes + ci] - stat[0]) * stat[1]
                    for cg, xo in T.grid(EV // ev, XT):  # expand 1x1 -> act, one row
                        for xi in T.unroll(rx):
                            for v in T.unroll(ev):
                                for ci in T.vectorized(lanes):
                                    acc[xi, v, ci] = zero
                        for c0 in range(C // cu):
                            for c1 in T.unroll(cu):
                                for xi in T.unroll(rx):
                                    for v in T.unroll(ev):
                                        for ci in T.vectorized(lanes):
                                            if xo * rx + xi < W:
                                                acc[xi, v, ci] = acc[xi, v, ci] + source(
                                                    x, mixed, nb // B, c0 * cu + c1, nb % B * th + t, xo * rx + xi
                                                ) * w1[c0 * cu + c1, (cg * ev + v) * lanes + ci]
                        for xi in T.unroll(rx):
                            for v in T.unroll(ev):
                                for ci in T.vectorized(lanes):
                                    if xo * rx + xi < W:
                                        mid[xo * rx + xi, (cg * ev + v) * lanes + ci] = (
                                            acc[xi, v, ci] + b1[(cg * ev + v) * lanes + ci])
                    for xx, e in T.grid(W, EV):  # act over the row: its polynomial (GELU's erf) can't sit in
                        for ci in T.vectorized(lanes):  # the register tile without spilling the accumulators
                            mid[xx, e * lanes + ci] = activate(mid[xx, e * lanes + ci], act)
                    for cg, xo in T.grid(OV // ov, PXT):  # project 1x1
                        for xi in T.unroll(px):
                            for v in T.unroll(ov):
                                for ci in T.vectorized(lanes):
                                    acc[xi, v, ci] = zero
                        for e0 in range(Ep // eu):
                            for e1 in T.unroll(eu):
                                for xi in T.unroll(px):
                                    for v in T.unroll(ov):
                                        for ci in T.vectorized(lanes):
                                            if xo * px + xi < W:
                                                acc[xi, v, ci] = acc[xi, v, ci] + mid[xo * px + xi, e0 * eu + e1] * w3[
                                                    e0 * eu + e1, (cg * ov + v) * lanes + ci]
                        for xi in T.unroll(px):
                            for v in T.unroll(ov):
                                for ci in T.vectorized(lanes):
                                    if xo * px + xi < W:
                                        proj_row[xo * px + xi, (cg * ov + v) * lanes + ci] = acc[xi, v, ci]
                    if out_block:  # the row stored in channel blocks (+ bias, + skip)
                        for cb, xx in T.grid(O // lanes, W):
                            for ci in T.vectorized(lanes):
                                if residual:
                                    out[nb // B, cb, nb % B * th + t, xx, ci] = (
                                        proj_row[xx, cb * lanes + ci] + b3[cb * lanes + ci]
                                        + load(skip, skip_block, nb // B, cb * lanes + ci, nb % B * th + t, xx))
                                else:
                                    out[nb // B, cb, nb % B * th + t, xx, ci] = (proj_row[xx, cb * lanes + ci]
                                                                                 + b3[cb * lanes + ci])
                    else:  # the row stored NCHW: its channels-last tile transposed
                        for o in range(O):
                            for xx in T.vectorized(W):
                                if residual:
                                    out[nb // B, o, nb % B * th + t, xx] = (
                                        proj_row[xx, o] + b3[o]
                                        + load(skip, skip_block, nb // B, o, nb % B * th + t, xx))
                                else:
                                    out[nb // B, o, nb % B * th + t, xx] = proj_row[xx, o] + b3[o]

    return fused


def blocked_io(block: PointwiseMLP, lanes: int) -> tuple[bool, bool]:
    """(input, output) in channel blocks where a model would store them so (the skip like the output)."""
    return block.expand.in_channels % lanes == 0, block.out_channels % lanes == 0


def build(block: PointwiseMLP, target, *, seed: int = 0, cold: bool = False):
    """The block's kernel compiled alone for ``target`` (this host) on random weights, its tensors blocked
    where a model would block them (``blocked_io``): a call with no arguments that runs it once."""
    rng = np.random.default_rng(seed)
    C, E, O, lanes = block.expand.in_channels, block.expand.out_channels, block.out_channels, target.lanes
    shapes = ((E, C), (E,), (O, E), (O,))
    if block.mixer is not None:
        shapes = ((C, 1, *block.mixer.kernel), (C,), (C,), (C,)) + shapes
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    prepared = prepare_weights(block, *arrays, lanes=lanes)
    in_block, out_block = blocked_io(block, lanes)
    func = prim_func(block, lanes, default_bands(block, target.cores), in_block=in_block, out_block=out_block,
                     skip_block=out_block)
    x_shape, out_shape = io_shapes(block, lanes, in_block, out_block)
    skip_shape = out_shape if block.residual else (1,)
    x, skip = (rng.standard_normal(shape).astype(np.float32) for shape in (x_shape, skip_shape))
    return compiled_alone(func, target, [x, *prepared, skip], out_shape, cold=cold)
