"""The fused inverted residual kernel (passes/fuse_blocks.py): expand 1x1 -> act -> depthwise kxk -> act ->
project 1x1 [+ x] as one PrimFunc whose intermediates never leave the cache; or the same up to the second
activation (``PARTIAL_KIND``), where a squeeze-excite follows: its global pool needs the whole depthwise
output before the projection can start, so that part and the projection stay separate kernels.

Compute, with E' and O' the expanded and output channels rounded up to the SIMD width (zero weights:
a padded channel is 0 through every stage, since each supported activation maps 0 to 0) and (pt, pl, pb, pr)
the depthwise conv's padding (``InvertedResidual.pads``: k // 2 on every side, or TF "SAME" padding's pad op):

    mid[n, y, x, e]  = a1(sum_c x[n, c, y - pt, x - pl] w1[c, e] + b1[e])  inside the map, 0 in the padding
    dw[n, y, x, e]   = a2(sum_{i,j} mid[n, s y + i, s x + j, e] w2[i, j, e] + b2[e])
    proj[n, y, x, o] = sum_e dw[n, y, x, e] w3[e, o]
    out[n, o, y, x]  = a3(proj[n, y, x, o] + b3[o] (+ x[n, o, y, x]))

with a3 the activation that follows the block where it is the projection's (or the add's) only reader
(MobileOne's and MobileNetV1-style chains, whose 1x1 convs all end in an activation), else none.

Loop structure (``prim_func``): the output rows are cut into bands, one per parallel iteration
(``default_bands``: one per core); a band walks its output rows in order and keeps the k rows of ``mid`` the
depthwise conv reads in a ring buffer [k, W + pl + pr, E'] (channels-last, so every stage is vectorized over
channels): its first row computes k rows, each next one only the s rows it adds (slot = row mod k), so an
expanded row is computed once (a band's first k - s rows are also its upper neighbour's last: the only
recomputation). Each output row's depthwise and projection go through one-row buffers, and the row is
stored NCHW or in channel blocks; without a projection, into a blocked output, the depthwise epilogue stores
the output itself (a copy of the row fewer). Every stage runs as register tiles of ``fused_space.column_tile``
columns x channel vectors with its epilogue applied per tile; the depthwise conv's k x k taps are unrolled, so
a ring vector is loaded once for the taps that read it (the expand + depthwise parts of efficientnet_b0's
blocks 0.79-0.98x their time with both, Zen 5: benchmarks/results/depthwise_inline_pad_s47_znver5.md). The
ring is k (W + pl + pr) E' floats (131 KB for 96 channels at 112 px): it stays in L2. The kernel that computed
bands of th rows with ``compute_at`` recomputed each band's halo, 15-120% of the expand's FLOPs; this one
measured 1.1-1.9x faster on mobilenetv2_100's blocks.

The kernel is written out in TVMScript, not as a TE compute with a schedule: no TE schedule expresses the
ring (``rolling_buffer`` makes the row loop opaque, and then the reduction can't be decomposed or
tiled), and the same ring written as nested TIR blocks with a schedule trips TVM 0.27's copy-on-write
(scheduling changes the workload the schedule was made from, so a tuning job's records of it no longer
replay). So its design space is its generator's parameters instead (fused_space.py: the most columns per
register tile, channel vectors per 1x1 tile, bands per core), sampled like a schedule's choices; the rules
above are its default point, and a tuning job measures the others.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from .activations import activate
from .conv_spec import ConvSpec
from . import prefetch, tiling
from .kernel import cold_copies
from .fused_space import DEFAULT, Tiles, bands_of, channel_vectors, column_tile

F32 = "float32"
KIND = "inverted_residual"
PARTIAL_KIND = "expand_depthwise"  # the block up to its second activation, when a squeeze-excite follows


@dataclass(frozen=True)
class InvertedResidual:
    """A matched block: its nodes in order and what the kernel needs to know."""

    nodes: tuple  # the IR nodes E, a1, [pad,] D, a2[, P[, add]] (empty when built from shapes alone)
    expand: ConvSpec
    depthwise: ConvSpec  # as the graph has it: of the padded map where a pad op comes first
    project: ConvSpec | None  # None: the block ends after a2 (a squeeze-excite follows, unfused)
    activations: tuple[str, str]
    residual: bool
    pre_pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # a zero pad op before D: (top, left, bottom, right)
    out_activation: str = "none"  # a3: after the projection (and the add); none without a projection

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """The depthwise conv's zero padding of the expanded map, (top, left, bottom, right): its own (symmetric)
        plus the pad op's before it (TF "SAME" padding of a strided conv: (0, 0, 1, 1) for k = 3 on even maps)."""
        (ph, pw), (t, l, b, r) = self.depthwise.padding, self.pre_pad
        return t + ph, l + pw, b + ph, r + pw

    @property
    def kind(self) -> str:
        return KIND if self.project is not None else PARTIAL_KIND

    @property
    def out_channels(self) -> int:
        return (self.project or self.depthwise).out_channels

    @property
    def convs(self) -> tuple[ConvSpec, ...]:
        return tuple(s for s in (self.expand, self.depthwise, self.project) if s is not None)

    @classmethod
    def of(cls, C: int, E: int, O: int | None, H: int, W: int, k: int, stride: int = 1, activation: str = "relu6",
           batch: int = 1, pre_pad: tuple[int, int, int, int] | None = None) -> "InvertedResidual":
        """A block from its shape alone (calibration, tests); residual when the shapes allow it; O None: the
        expand and depthwise part alone. ``pre_pad`` (top, left, bottom, right): a pad op before an unpadded
        depthwise conv instead of its k // 2 on every side."""
        expand = ConvSpec(batch, C, H, W, E, (1, 1))
        if pre_pad is None:
            depthwise = ConvSpec(batch, E, H, W, E, (k, k), (stride, stride), (k // 2, k // 2), groups=E)
        else:
            t, l, b, r = pre_pad
            depthwise = ConvSpec(batch, E, H + t + b, W + l + r, E, (k, k), (stride, stride), groups=E)
        project = None if O is None else ConvSpec(batch, E, depthwise.out_height, depthwise.out_width, O, (1, 1))
        residual = O is not None and C == O and (depthwise.out_height, depthwise.out_width) == (H, W)
        return cls((), expand, depthwise, project, (activation, activation), residual, pre_pad or (0, 0, 0, 0))


SUPPORTED_ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "gelu", "gelu_tanh")  # each maps 0 to 0


def supports(block) -> str | None:
    """None when the kernel computes ``block``, else why not."""
    acts = block.activations + ((block.out_activation,) if block.out_activation != "none" else ())
    if any(a.partition(":")[0] not in SUPPORTED_ACTIVATIONS for a in acts):
        return f"activations {acts}: the kernel pads channels, which needs act(0) = 0"
    if block.out_activation != "none" and block.project is None:
        return "an activation after the block needs its projection"
    if block.depthwise.kernel[0] > 7:
        return "depthwise kernels up to 7x7"
    if max(block.pads) >= block.depthwise.kernel[0] or min(block.pads) < 0:
        return f"depthwise padding {block.pads}: from 0 to k - 1 on each side"
    return None


def round_up(v: int, m: int) -> int:
    """``v`` rounded up to a multiple of ``m`` (channels to whole vectors)."""
    return (v + m - 1) // m * m


VECTOR_TASKS_PER_CORE = 2  # a kernel parallel over channel vectors splits rows in bands until each core has these


def vector_bands(vectors: int, height: int, cores: int) -> int:
    """Row bands per channel vector of a kernel whose parallel tasks are (image, channel vector, band) over
    ``vectors`` vectors of all images (schedules/squeeze_excite.py, token_mixer.py): one, unless there are fewer
    vectors than ``VECTOR_TASKS_PER_CORE`` a core; at most a band a row."""
    return max(1, min(height, -(-VECTOR_TASKS_PER_CORE * cores // vectors)))


def padded_vector(values, size: int) -> np.ndarray:
    """``values`` (None: none) as float32 zero-padded to ``size`` (a bias for channels rounded up to vectors)."""
    out = np.zeros(size, np.float32)
    if values is not None:
        out[: len(values)] = values
    return out


def prepare_weights(block, w1: np.ndarray, b1, w2: np.ndarray, b2, w3: np.ndarray | None = None, b3=None, *,
                    lanes: int) -> list[np.ndarray]:
    """The kernel's constants [w1 [C, E'], b1 [E'], w2 [k, k, E'], b2 [E'], w3 [E', O'], b3 [O']] from the
    convs' OIHW weights and biases (None: no bias; without a projection w3 and b3 are unused 1-element zeros)."""
    C, E, O = block.expand.in_channels, block.expand.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    k = block.depthwise.kernel[0]
    padded = padded_vector
    w1_ = np.zeros((C, Ep), np.float32)
    w1_[:, :E] = np.asarray(w1, np.float32).reshape(E, C).T
    w2_ = np.zeros((k, k, Ep), np.float32)
    w2_[:, :, :E] = np.asarray(w2, np.float32).reshape(E, k, k).transpose(1, 2, 0)
    prepared = [w1_, padded(b1, Ep), w2_, padded(b2, Ep)]
    if block.project is None:  # the kernel's signature is the same for both kinds: w3, b3 unused
        return prepared + [np.zeros((1, 1), np.float32), np.zeros(1, np.float32)]
    w3_ = np.zeros((Ep, Op), np.float32)
    w3_[:E, :O] = np.asarray(w3, np.float32).reshape(O, E).T
    return prepared + [w3_, padded(b3, Op)]


def cores_per_image(block, cores: int) -> int:
    """The cores left to each image after the batch's images (one per core) are shared out."""
    return -(-cores // block.expand.batch)


def default_groups(block, cores: int = 1, lanes: int = 16) -> int:
    """Channel groups per image: without a projection (``PARTIAL_KIND``) each expanded channel's depthwise
    output depends on that channel alone, so the cores left to an image can split its channels (the expand
    stage's channel tiles shared out, a group's the same count or one more), which computes no expand row
    twice; bands of rows recompute each band's first k - s rows (efficientnet_b0's 192 -> 1152 block at 7x7,
    5x5 depthwise: 11 expand rows for 7 in two bands). The split with the shorter longest share wins; with a
    projection, which needs every channel of a row, bands (``default_bands``)."""
    share = cores_per_image(block, cores)
    if block.project is not None or share < 2:
        return 1
    d = block.depthwise
    tiles = round_up(block.expand.out_channels, lanes) // lanes // plan(block, lanes)[1]  # expand channel tiles
    if tiles < share:
        return 1
    bands = min(d.out_height, share)
    rows = tiling.ring_band_rows(d.kernel[0], d.stride[0], d.out_height, block.expand.height, block.pads[0], bands)
    band_share = max(rows) / (sum(tiling.ring_band_rows(d.kernel[0], d.stride[0], d.out_height,
                                                        block.expand.height, block.pads[0], 1)) / share)
    group_share = -(-tiles // share) / (tiles / share)
    return share if group_share < band_share else 1


def default_bands(block, cores: int = 1, lanes: int = 16) -> int:
    """Bands per image: one per core left after the batch's images (each band's first ring fill computes
    k - s expand rows its neighbour band also computes), at most one per output row; one where the cores
    split the channels instead (``default_groups``)."""
    if default_groups(block, cores, lanes) > 1:
        return 1
    return max(1, min(block.depthwise.out_height, cores_per_image(block, cores)))


def io_shapes(block, lanes: int, in_block: bool = False, out_block: bool = False
              ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stored shapes of the kernel's input and output (``prim_func``)."""
    e_, d = block.expand, block.depthwise
    N, C, O = e_.batch, e_.in_channels, block.out_channels
    # blocked: ceil(C / lanes) blocks, a padded last block's pad lanes zero (ir/layout.py)
    x = (N, -(-C // lanes), e_.height, e_.width, lanes) if in_block else (N, C, e_.height, e_.width)
    out = (N, -(-O // lanes), d.out_height, d.out_width, lanes) if out_block else (N, O, d.out_height, d.out_width)
    return x, out


def plan(block, lanes: int, bands: int = 1, tiles: Tiles = DEFAULT) -> tuple[int, ...]:
    """The kernel's tiles at point ``tiles`` of its space (fused_space.py) given the rule's ``bands``: output
    rows per band, channel vectors per 1x1 tile (expand, project), columns per tile (expand, depthwise,
    project)."""
    d = block.depthwise
    Ep, Op = round_up(block.expand.out_channels, lanes), round_up(block.out_channels, lanes)
    th = -(-d.out_height // bands_of(bands, d.out_height, tiles))
    ev, ov = (channel_vectors(v // lanes, tiles.vectors, lanes) for v in (Ep, Op))
    most = tiles.columns
    return (th, ev, ov, column_tile(block.expand.width, lanes, ev, most), column_tile(d.out_width, lanes, 1, most),
            column_tile(d.out_width, lanes, ov, most))


def prim_func(block, lanes: int, bands: int = 1, *, in_block: bool = False, out_block: bool = False,
              tiles: Tiles = DEFAULT, groups: int = 1) -> tirx.PrimFunc:
    """The block's kernel, written out (not scheduled: see the module docstring): arguments x [N, C, H, W],
    the prepared weights (``prepare_weights``) and the output [N, O, OH, OW] (without a projection: the
    depthwise stage's activations, [N, E, OH, OW]). ``in_block`` / ``out_block``: x (and the residual) / the
    output stored in channel blocks of ``lanes``, [N, C/lanes, H, W, lanes] (passes/block_layout.py); the
    output's rows then store whole vectors instead of transposing the row; with O not a multiple of ``lanes``
    the last block's pad lanes get the padded channels' zeros (a residual then needs x blocked alike, whose
    pad lanes are zeros too). ``bands``: the rule's bands per
    image (``default_bands``); ``tiles``: the point of the kernel's design space (fused_space.py);
    ``groups``: channel groups per band, each a parallel iteration of its own (``default_groups``; only
    without a projection)."""
    e_, d = block.expand, block.depthwise
    N, C, H, W = e_.batch, e_.in_channels, e_.height, e_.width
    E, O = e_.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    k, s = d.kernel[0], d.stride[0]
    pt, pl, pb, pr = block.pads
    OH, OW = d.out_height, d.out_width
    Wp = W + pl + pr
    th, ev, ov, rx, dx, px = plan(block, lanes, bands, tiles)  # rows per band; a register tile's vectors, columns
    B = -(-OH // th)
    a1, a2 = block.activations
    a3 = block.out_activation
    projects, residual = block.project is not None, block.residual
    w3_shape, b3_shape = ((Ep, Op), (Op,)) if projects else ((1, 1), (1,))  # unused without a projection
    EV, OV = Ep // lanes, Op // lanes  # channel vectors
    XT, DXT, PXT = -(-W // rx), -(-OW // dx), -(-OW // px)
    G, CG = groups, EV // ev  # channel groups; the expand stage's channel tiles, group g's [CG g / G, CG (g+1) / G)
    if G > 1 and (projects or CG < G):
        raise ValueError(f"block of {block.expand.describe()}: {G} channel groups need no projection and at least "
                         f"as many expand channel tiles ({CG})")
    zero = tirx.const(0.0, F32)
    stores_depthwise = out_block and not projects  # the depthwise epilogue stores the output itself
    cu, eu = tiling.reduction_unroll(C), tiling.reduction_unroll(Ep)  # the 1x1s' channels unrolled by a few
    x_shape, out_shape = io_shapes(block, lanes, in_block, out_block)
    if out_block and residual and O % lanes and not in_block:  # the pad lanes would add x's channels past C
        raise ValueError(f"block of {block.expand.describe()}: a padded blocked output with a residual needs the "
                         "input blocked")

    def load(buffer, n, c, y, x_):  # x[n, c, y, x_] in either layout
        return buffer[n, c // lanes, y, x_, c % lanes] if in_block else buffer[n, c, y, x_]

    @T.prim_func(s_tir=False)
    def fused(x: T.Buffer(x_shape, F32), w1: T.Buffer((C, Ep), F32), b1: T.Buffer((Ep,), F32),
              w2: T.Buffer((k, k, Ep), F32), b2: T.Buffer((Ep,), F32), w3: T.Buffer(w3_shape, F32),
              b3: T.Buffer(b3_shape, F32), out: T.Buffer(out_shape, F32)):
        T.func_attr({"tirx.noalias": True})
        for nbg in T.parallel(N * B * G):  # one band (of one channel group) of one image per iteration
            nb = T.meta_var(nbg // G)
            lo = T.meta_var(nbg % G * CG // G)  # the group's first expand channel tile, and the next group's
            hi = T.meta_var((nbg % G + 1) * CG // G)
            ring = T.alloc_buffer((k, Wp, Ep), F32)  # padded input rows of mid: row r at slot r mod k
            dw_row = T.alloc_buffer((OW, Ep), F32)
            proj_row = T.alloc_buffer((OW, Op), F32)
            acc = T.alloc_buffer((max(rx, dx, px), max(2, ev, ov), lanes), F32, scope="local")  # a register tile
            for j, pc, e in T.grid(k, pl + pr, Ep):  # the padding columns, never written again
                ring[j, T.if_then_else(pc < pl, pc, W + pc), e] = zero
            for t in range(th):
                if nb % B * th + t < OH:
                    for j in range(k):  # the band's first output row fills the ring, each next one adds s rows
                        if T.Or(t == 0, j >= k - s):
                            if T.And((nb % B * th + t) * s + j >= pt, (nb % B * th + t) * s + j < H + pt):
                                for xo, cgl in T.grid(XT, hi - lo):  # expand 1x1 -> a1, into the ring
                                    cg = T.meta_var(lo + cgl)
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
                                                            acc[xi, v, ci] = acc[xi, v, ci] + load(
                                                                x, nb // B, c0 * cu + c1, (nb % B * th + t) * s + j - pt,
                                                                xo * rx + xi) * w1[c0 * cu + c1, (cg * ev + v) * lanes + ci]
                                    for xi in T.unroll(rx):
                                        for v in T.unroll(ev):
                                            for ci in T.vectorized(lanes):
                                                if xo * rx + xi < W:
                                                    ring[(t * s + j) % k, pl + xo * rx + xi, (cg * ev + v) * lanes + ci] = (
                                                        activate(acc[xi, v, ci] + b1[(cg * ev + v) * lanes + ci], a1))
                            else:  # a padding row
                                for xx, e in T.grid(Wp, Ep):
                                    ring[(t * s + j) % k, xx, e] = zero
                    for xo, col in T.grid(DXT, (hi - lo) * ev):  # depthwise kxk -> a2, one output row
                        co = T.meta_var(lo * ev + col)
                        for xi in T.unroll(dx):
                            for ci in T.vectorized(lanes):
                                acc[xi, 0, ci] = zero
                        for i in T.unroll(k):  # taps unrolled: each ring vector loaded once for its taps
                            for jj in T.unroll(k):
                                for xi in T.unroll(dx):
                                    for ci in T.vectorized(lanes):
                                        if xo * dx + xi < OW:
                                            acc[xi, 0, ci] = acc[xi, 0, ci] + ring[
                                                (t * s + i) % k, (xo * dx + xi) * s + jj, co * lanes + ci
                                            ] * w2[i, jj, co * lanes + ci]
                        for xi in T.unroll(dx):
                            for ci in T.vectorized(lanes):
                                if xo * dx + xi < OW:
                                    if stores_depthwise:  # no projection: the group's channel blocks
                                        out[nb // B, co, nb % B * th + t, xo * dx + xi, ci] = activate(
                                            acc[xi, 0, ci] + b2[co * lanes + ci], a2)
                                    else:
                                        dw_row[xo * dx + xi, co * lanes + ci] = activate(
                                            acc[xi, 0, ci] + b2[co * lanes + ci], a2)
                    if projects:
                        for xo, cg in T.grid(PXT, OV // ov):  # project 1x1
                            for xi in T.unroll(px):
                                for v in T.unroll(ov):
                                    for ci in T.vectorized(lanes):
                                        acc[xi, v, ci] = zero
                            for e0 in range(Ep // eu):
                                for e1 in T.unroll(eu):
                                    for xi in T.unroll(px):
                                        for v in T.unroll(ov):
                                            for ci in T.vectorized(lanes):
                                                if xo * px + xi < OW:
                                                    acc[xi, v, ci] = acc[xi, v, ci] + dw_row[xo * px + xi, e0 * eu + e1] * w3[
                                                        e0 * eu + e1, (cg * ov + v) * lanes + ci]
                            for xi in T.unroll(px):
                                for v in T.unroll(ov):
                                    for ci in T.vectorized(lanes):
                                        if xo * px + xi < OW:
                                            proj_row[xo * px + xi, (cg * ov + v) * lanes + ci] = acc[xi, v, ci]
                        if out_block:  # the row stored in channel blocks (+ bias, + the input)
                            for cb, xx in T.grid(Op // lanes, OW):
                                for ci in T.vectorized(lanes):
                                    if residual:
                                        out[nb // B, cb, nb % B * th + t, xx, ci] = activate(
                                            proj_row[xx, cb * lanes + ci] + b3[cb * lanes + ci]
                                            + load(x, nb // B, cb * lanes + ci, nb % B * th + t, xx), a3)
                                    else:
                                        out[nb // B, cb, nb % B * th + t, xx, ci] = activate(
                                            proj_row[xx, cb * lanes + ci] + b3[cb * lanes + ci], a3)
                        else:  # the row stored NCHW: its channels-last tile transposed
                            for o in range(O):
                                for xx in T.vectorized(OW):
                                    if residual:
                                        out[nb // B, o, nb % B * th + t, xx] = activate(
                                            proj_row[xx, o] + b3[o] + load(x, nb // B, o, nb % B * th + t, xx), a3)
                                    else:
                                        out[nb // B, o, nb % B * th + t, xx] = activate(proj_row[xx, o] + b3[o], a3)
                    elif not out_block:
                        for o in range((hi - lo) * ev * lanes):  # the group's channels
                            if lo * ev * lanes + o < O:
                                for xx in T.vectorized(OW):
                                    out[nb // B, lo * ev * lanes + o, nb % B * th + t, xx] = dw_row[xx, lo * ev * lanes + o]

    return fused


def blocked_io(block, lanes: int) -> tuple[bool, bool]:
    """(input, output) in channel blocks where a model would store them so (passes/block_layout.py keeps a
    value blocked when its channels fill whole vectors and its neighbours take blocks)."""
    return block.expand.in_channels % lanes == 0, block.out_channels % lanes == 0


def build(block: InvertedResidual, target, *, seed: int = 0, cold: bool = False):
    """The block's kernel compiled alone for ``target`` (this host) on random weights, its input and output
    blocked where a model would block them (``blocked_io``): a call with no arguments that runs it once
    (calibration times it)."""
    rng = np.random.default_rng(seed)
    C, E, O = block.expand.in_channels, block.expand.out_channels, block.out_channels
    k, lanes = block.depthwise.kernel[0], target.lanes
    shapes = ((E, C), (E,), (E, k, k), (E,)) + (((O, E), (O,)) if block.project is not None else ())
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    prepared = prepare_weights(block, *arrays, lanes=lanes)
    in_block, out_block = blocked_io(block, lanes)
    func = prim_func(block, lanes, default_bands(block, target.cores, lanes), in_block=in_block, out_block=out_block,
                     groups=default_groups(block, target.cores, lanes))
    x_shape, out_shape = io_shapes(block, lanes, in_block, out_block)
    return compiled_alone(func, target, [rng.standard_normal(x_shape).astype(np.float32), *prepared], out_shape,
                          cold=cold)


def compiled_alone(func: tirx.PrimFunc, target, inputs: list[np.ndarray], out_shape, *,
                   cold: bool = False) -> "Callable[[], None]":
    """``func`` compiled for ``target`` (this host), bound to ``inputs`` and an output of ``out_shape``: a call
    with no arguments that runs it once (calibration and benchmarks time it). ``cold``: each call takes the
    next of ``kernel.cold_copies`` copies of the activation (``inputs[0]``) and the output, so that they are
    not in L2, as in a model."""
    footprint = 4 * (inputs[0].size + int(np.prod(out_shape)))
    copies = cold_copies(footprint, target) if cold else 1
    target.configure_runtime()
    compiled = prefetch.compile(tvm.IRModule({"main": func}), target.tvm)["main"]
    device = target.device()
    rest = [tvm.runtime.tensor(a, device) for a in inputs[1:]]
    arg_sets = [[tvm.runtime.tensor(inputs[0], device), *rest, tvm.runtime.empty(out_shape, "float32", device)]
                for _ in range(copies)]
    turn = itertools.cycle(arg_sets)
    return lambda: compiled(*next(turn))
