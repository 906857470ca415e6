"""The fused dense conv chain kernel (passes/fuse_blocks.py): two or three dense convs (groups 1) run as one
PrimFunc whose intermediates never leave the cache. Two kinds:

    conv_pair:   y = act(B(a1(A(x))) [+ s])            ResNet's basic block (A, B 3x3; s the block input or
                                                        its downsampled copy), RepVGG / VGG chains after
                                                        reparameterization (no s)
    bottleneck:  y = act(P(a2(B(a1(A(x))))) [+ s])     ResNet's bottleneck (A, P 1x1; B k x k)

A and B are any square convs with odd kernels and "same" padding (k // 2), stride 1 or 2 (A of a bottleneck
1x1, stride 1), P a 1x1 conv; the activations inside map 0 to 0 (channels are padded with zero weights),
the last one (after the add) is any epilogue activation or none; s is any tensor of the output's shape.

Compute, channels-last inside, with M', N', O' the channels rounded up to the SIMD width:

    win[i, x, c]     = x[n, c, r sA - pA + i, x - pA]       the k_A input rows row r of A reads (0 outside)
    ring[r, x, m]    = a1(sum_{i,j,c} win[i, x sA + j, c] wA[i, j, c, m] + bA[m])      A's row r
    mid[y, x, m']    = a2(sum_{i,j,m} ring[y sB - pB + i, x sB + j, m] wB[i, j, m, m'] + bB[m'])
    out[n, o, y, x]  = act(sum_m' mid[y, x, m'] wP[m', o] + bP[o] (+ s[n, o, y, x]))
                       (conv_pair: act(B's sum + bB[o] (+ s)) directly)

Loop structure (``prim_func``), the inverted residual kernel's (schedules/fused_block.py) with a dense middle
conv: the output rows are cut into bands, one per core (``default_bands``); a band walks its output rows in
order and keeps the k_B rows of A's output that B reads in a ring buffer [k_B, W_A + 2 p_B, M'] (row r at
slot (r + p_B) mod k_B): its first output row computes k_B rows of A, each next one the s_B rows it adds.
Each row of A first copies the k_A input rows it reads into a channels-last window (zero-padded; k_A C W
floats, against 2 k_A^2 C M W FLOPs), so every stage is the same register tile: ``column_tile`` columns x
one or two channel vectors, a broadcast input times weight vectors, over the taps and input channels. The
output row goes through a channels-last row buffer and is stored in the output's layout (NCHW or channel
blocks) with the bias, the skip and the last activation. Each stage walks its channel groups outside its
column tiles, so a group's weights are read once per row of the stage and reused along it from L1/L2.

What it gives up: the separate kernels run 3x3 convs by Winograd where that wins (convopt's resnet18
layer1: ~600 GFLOP/s-equivalent against the ~200 a direct 3x3 reaches here), and weights stream once per
output row (per row of A) where they exceed the cache. The cost model (cost/fused.py) weighs that against
the intermediates' traffic; it is a tile-sized pipeline where the maps are large and the channels few.

Written out in TVMScript like the other CPU fused kernels (schedules/fused_block.py says why); its design
space is its generator's column tiles and bands (``KNOBS``, fused_space.py).
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

F32 = "float32"
PAIR_KIND = "conv_pair"
BOTTLENECK_KIND = "bottleneck"
KINDS = (PAIR_KIND, BOTTLENECK_KIND)


@dataclass(frozen=True)
class ConvChain:
    """A matched chain: its nodes in order and what the kernel needs to know."""

    nodes: tuple  # the IR nodes A, a1, B[, a2, P][, add][, act] (empty when built from shapes alone)
    convs: tuple[ConvSpec, ...]  # (A, B) or (A, B, P)
    activations: tuple[str, ...]  # after A[, after B]: inside the chain, each maps 0 to 0
    residual: bool  # + s before the last activation (s: the add's other operand, any tensor of y's shape)
    out_activation: str = "none"  # after the add (or the last conv)

    @property
    def kind(self) -> str:
        return BOTTLENECK_KIND if len(self.convs) == 3 else PAIR_KIND

    @property
    def out_channels(self) -> int:
        return self.convs[-1].out_channels

    @classmethod
    def of(cls, C: int, M: int, O: int, H: int, W: int, k: int = 3, stride: int = 1, *, bottleneck: bool = False,
           residual: bool | None = None, activation: str = "relu", batch: int = 1) -> "ConvChain":
        """A chain from its shape alone (calibration, tests): a basic block C -> M -> O (k x k convs, the stride
        on A), or a bottleneck C -> M (1x1) -> M (k x k, the stride) -> O (1x1); residual by default where the
        shapes allow it."""
        if bottleneck:
            a = ConvSpec(batch, C, H, W, M, (1, 1))
            b = ConvSpec(batch, M, H, W, M, (k, k), (stride, stride), (k // 2, k // 2))
            convs = (a, b, ConvSpec(batch, M, b.out_height, b.out_width, O, (1, 1)))
        else:
            a = ConvSpec(batch, C, H, W, M, (k, k), (stride, stride), (k // 2, k // 2))
            convs = (a, ConvSpec(batch, M, a.out_height, a.out_width, O, (k, k), (1, 1), (k // 2, k // 2)))
        if residual is None:
            residual = stride == 1 and C == O
        return cls((), convs, (activation,) * (len(convs) - 1), residual, activation)


def supports(chain: ConvChain) -> str | None:
    """None when the kernel computes ``chain``, else why not."""
    if any(a.partition(":")[0] not in SUPPORTED_ACTIVATIONS for a in chain.activations):
        return f"activations {chain.activations}: the kernel pads channels, which needs act(0) = 0"
    for spec in chain.convs:
        k = spec.kernel[0]
        if (spec.groups != 1 or spec.kernel != (k, k) or k % 2 == 0 or k > 7 or spec.padding != (k // 2, k // 2)
                or spec.dilation != (1, 1) or spec.stride not in ((1, 1), (2, 2))):
            return f"conv {spec.describe()}: dense, square odd kernels up to 7x7, same padding, stride 1 or 2"
    if chain.kind == BOTTLENECK_KIND and any(s.kernel != (1, 1) or s.stride != (1, 1) for s in chain.convs[::2]):
        return "a bottleneck's first and last convs are 1x1, stride 1"
    if chain.convs[1].stride[0] > chain.convs[1].kernel[0]:
        return "a second conv whose stride exceeds its kernel (rows of the first it never reads)"
    if chain.kind == PAIR_KIND and chain.convs[0].kernel == (1, 1) and chain.convs[1].kernel == (1, 1):
        return "two 1x1 convs are a pointwise MLP (schedules/fused_mlp.py)"
    return None


def group_width(channels: int, lanes: int) -> int:
    """Output channels per register tile of a stage with ``channels`` (padded) outputs: its weights are stored
    in groups of this many (``prepare_weights``)."""
    return channel_vectors(channels // lanes) * lanes


def _dense_weight(w, in_padded: int, out_padded: int, lanes: int) -> np.ndarray:
    """OIHW -> [O' / g, kh, kw, I', g] (g = ``group_width``, channels zero-padded): the weights a register
    tile reads are contiguous (output-channel-major, they were 2 KB apart per input channel, and the wide
    late stages spent their time in TLB misses: 512 channels at 7 px ran 11 ms)."""
    w = np.asarray(w, np.float32)
    O, I, kh, kw = w.shape
    full = np.zeros((kh, kw, in_padded, out_padded), np.float32)
    full[:, :, :I, :O] = w.transpose(2, 3, 1, 0)
    g = group_width(out_padded, lanes)
    return np.ascontiguousarray(full.reshape(kh, kw, in_padded, out_padded // g, g).transpose(3, 0, 1, 2, 4))


def padded_channels(chain: ConvChain, lanes: int) -> tuple[int, ...]:
    """Each conv's output channels rounded up to the SIMD width."""
    return tuple(round_up(s.out_channels, lanes) for s in chain.convs)


def prepare_weights(chain: ConvChain, *arrays, lanes: int) -> list[np.ndarray]:
    """The kernel's constants [wA, bA, wB, bB(, wP, bP)] ([O'/g, k, k, I', g] weights, [O'] biases) from each
    conv's OIHW weight and bias (None: no bias), in order."""
    outs = padded_channels(chain, lanes)
    ins = (chain.convs[0].in_channels, *outs[:-1])  # the input's channels are not padded (the window copies C)
    prepared = []
    for (w, b), i, o in zip(zip(arrays[::2], arrays[1::2]), ins, outs):
        prepared += [_dense_weight(w, i, o, lanes), padded_vector(b, o)]
    return prepared


def default_bands(chain: ConvChain, cores: int = 1) -> int:
    """Bands per image: one per core left after the batch's images, at most one per output row."""
    return max(1, min(chain.convs[1].out_height, -(-cores // chain.convs[0].batch)))


def io_shapes(chain: ConvChain, lanes: int, in_block: bool = False, out_block: bool = False
              ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stored shapes of the kernel's input and output (the skip is stored like the output)."""
    a, last = chain.convs[0], chain.convs[-1]
    N, C, O = a.batch, a.in_channels, last.out_channels
    x = (N, C // lanes, a.height, a.width, lanes) if in_block else (N, C, a.height, a.width)
    out = (N, O // lanes, last.out_height, last.out_width, lanes) if out_block else (
        N, O, last.out_height, last.out_width)
    return x, out


KNOBS = ("columns", "band_factor")  # its space (fused_space.py): the weights' layout follows the channel pairing


def plan(chain: ConvChain, lanes: int, bands: int = 1, tiles: Tiles = DEFAULT) -> tuple[int, ...]:
    """The kernel's tiles at point ``tiles`` of its space (``KNOBS``) given the rule's ``bands``: output rows
    per band, channel vectors per tile (A, B, P: the rule), columns per tile (A, B, P)."""
    sa, sb = chain.convs[0], chain.convs[1]
    padded = padded_channels(chain, lanes)
    va, vb, vp = (channel_vectors(v // lanes) for v in (padded[0], padded[1], padded[-1]))
    th = -(-sb.out_height // bands_of(bands, sb.out_height, tiles))
    most = tiles.columns
    return (th, va, vb, vp, column_tile(sa.out_width, lanes, va, most), column_tile(sb.out_width, lanes, vb, most),
            column_tile(sb.out_width, lanes, vp, most))


def prim_func(chain: ConvChain, lanes: int, bands: int = 1, *, in_block: bool = False, out_block: bool = False,
              skip_block: bool = False, tiles: Tiles = DEFAULT) -> tirx.PrimFunc:
    """The chain's kernel: arguments x, the prepared weights (``prepare_weights``; a conv_pair gets unused
    1-element wP, bP), skip and out. ``in_block`` / ``skip_block`` / ``out_block``: that tensor stored in
    channel blocks of ``lanes``, [N, C/lanes, H, W, lanes] (passes/block_layout.py). Without a residual, skip
    is an unused 1-element buffer. ``bands``: the rule's bands per image (``default_bands``); ``tiles``: the
    point of the kernel's space (``KNOBS``, fused_space.py)."""
    if tiles.vectors != DEFAULT.vectors:
        raise ValueError("the chain kernel's channel pairing is fixed by its weights' layout")
    sa, sb = chain.convs[0], chain.convs[1]
    projects = len(chain.convs) == 3
    N, C, H, W = sa.batch, sa.in_channels, sa.height, sa.width
    kA, sA, pA = sa.kernel[0], sa.stride[0], sa.padding[0]
    kB, sB, pB = sb.kernel[0], sb.stride[0], sb.padding[0]
    HA, WA = sa.out_height, sa.out_width  # A's output: the rows the ring holds
    OH, OW = sb.out_height, sb.out_width
    MA, MB = padded_channels(chain, lanes)[:2]
    mu = tiling.reduction_unroll(MB)  # the projection's channels unrolled by a few
    O = chain.out_channels
    Op = padded_channels(chain, lanes)[-1]
    Wx, Wr = W + 2 * pA, WA + 2 * pB  # the window's and the ring's padded widths
    th, va, vb, vp, rx, dx, px = plan(chain, lanes, bands, tiles)  # rows per band; a tile's vectors, columns
    B = -(-OH // th)
    a1 = chain.activations[0]
    a2 = chain.activations[1] if projects else "none"
    act, residual = chain.out_activation, chain.residual
    VA, VB, VP = MA // lanes, MB // lanes, Op // lanes  # channel vectors
    XT, DXT, PXT = -(-WA // rx), -(-OW // dx), -(-OW // px)
    wp_shape, bp_shape = ((VP // vp, 1, 1, MB, vp * lanes), (Op,)) if projects else ((1, 1, 1, 1, 1), (1,))
    zero = tirx.const(0.0, F32)
    x_shape, out_shape = io_shapes(chain, lanes, in_block, out_block)
    skip_shape = io_shapes(chain, lanes, False, skip_block)[1] if residual else (1,)

    def load(buffer, blocked, n, c, y, x_):  # buffer[n, c, y, x_] in either layout
        return buffer[n, c // lanes, y, x_, c % lanes] if blocked else buffer[n, c, y, x_]

    def finish(value, bp, bb, skip, n, o, y, x_):  # + the last conv's bias, + skip, the last activation
        value = value + (bp[o] if projects else bb[o])
        if residual:
            value = value + load(skip, skip_block, n, o, y, x_)
        return activate(value, act)

    @T.prim_func(s_tir=False)
    def fused(x: T.Buffer(x_shape, F32), wa: T.Buffer((VA // va, kA, kA, C, va * lanes), F32),
              ba: T.Buffer((MA,), F32), wb: T.Buffer((VB // vb, kB, kB, MA, vb * lanes), F32),
              bb: T.Buffer((MB,), F32), wp: T.Buffer(wp_shape, F32),
              bp: T.Buffer(bp_shape, F32), skip: T.Buffer(skip_shape, F32), out: T.Buffer(out_shape, F32)):
        T.func_attr({"tirx.noalias": True})
        for nb in T.parallel(N * B):  # one band of one image per iteration
            win = T.alloc_buffer((kA, Wx, C), F32)  # the input rows one row of A reads, channels-last, padded
            ring = T.alloc_buffer((kB, Wr, MA), F32)  # rows of A's output: row r at slot (r + pB) mod kB
            mid = T.alloc_buffer((OW, MB), F32)  # one row of B's output (a bottleneck's a2 applied)
            last = T.alloc_buffer((OW, Op), F32)  # one row of the last conv's sums, before the epilogue
            acc = T.alloc_buffer((max(rx, dx, px), 2, lanes), F32, scope="local")  # a register tile
            for i, pc, c in T.grid(kA, 2 * pA, C):  # the window's padding columns, never written again
                win[i, T.if_then_else(pc < pA, pc, W + pc), c] = zero
            for j, pc, m in T.grid(kB, 2 * pB, MA):  # the ring's
                ring[j, T.if_then_else(pc < pB, pc, WA + pc), m] = zero
            for t in range(th):
                if nb % B * th + t < OH:
                    for j in range(kB):  # the band's first output row fills the ring, each next one adds sB rows
                        if T.Or(t == 0, j >= kB - sB):
                            if T.And((nb % B * th + t) * sB + j >= pB, (nb % B * th + t) * sB + j < HA + pB):
                                for i in range(kA):  # the input rows row r = (..) sB + j - pB of A reads
                                    if T.And(((nb % B * th + t) * sB + j - pB) * sA + i >= pA,
                                             ((nb % B * th + t) * sB + j - pB) * sA + i < H + pA):
                                        for c, xx in T.grid(C, W):
                                            win[i, pA + xx, c] = load(
                                                x, in_block, nb // B, c, ((nb % B * th + t) * sB + j - pB) * sA + i - pA,
                                                xx)
                                    else:
                                        for c, xx in T.grid(C, W):
                                            win[i, pA + xx, c] = zero
                                for cg, xo in T.grid(VA // va, XT):  # A -> a1, into the ring (a group's weights reused along the row)
                                    for xi in T.unroll(rx):
                                        for v in T.unroll(va):
                                            for ci in T.vectorized(lanes):
                                                acc[xi, v, ci] = zero
                                    for i, jj, c in T.grid(kA, kA, C):
                                        for xi in T.unroll(rx):
                                            for v in T.unroll(va):
                                                for ci in T.vectorized(lanes):
                                                    if xo * rx + xi < WA:
                                                        acc[xi, v, ci] = acc[xi, v, ci] + win[
                                                            i, (xo * rx + xi) * sA + jj, c
                                                        ] * wa[cg, i, jj, c, v * lanes + ci]
                                    for xi in T.unroll(rx):
                                        for v in T.unroll(va):
                                            for ci in T.vectorized(lanes):
                                                if xo * rx + xi < WA:
                                                    ring[((nb % B * th + t) * sB + j) % kB, pB + xo * rx + xi,
                                                         (cg * va + v) * lanes + ci] = activate(
                                                        acc[xi, v, ci] + ba[(cg * va + v) * lanes + ci], a1)
                            else:  # a padding row
                                for xx, m in T.grid(Wr, MA):
                                    ring[((nb % B * th + t) * sB + j) % kB, xx, m] = zero
                    for cg, xo in T.grid(VB // vb, DXT):  # B, one output row
                        for xi in T.unroll(dx):
                            for v in T.unroll(vb):
                                for ci in T.vectorized(lanes):
                                    acc[xi, v, ci] = zero
                        for i, jj, m in T.grid(kB, kB, MA):
                            for xi in T.unroll(dx):
                                for v in T.unroll(vb):
                                    for ci in T.vectorized(lanes):
                                        if xo * dx + xi < OW:
                                            acc[xi, v, ci] = acc[xi, v, ci] + ring[
                                                ((nb % B * th + t) * sB + i) % kB, (xo * dx + xi) * sB + jj, m
                                            ] * wb[cg, i, jj, m, v * lanes + ci]
                        for xi in T.unroll(dx):
                            for v in T.unroll(vb):
                                for ci in T.vectorized(lanes):
                                    if xo * dx + xi < OW:
                                        if projects:  # a2 here, the projection reads it
                                            mid[xo * dx + xi, (cg * vb + v) * lanes + ci] = activate(
                                                acc[xi, v, ci] + bb[(cg * vb + v) * lanes + ci], a2)
                                        else:  # the sums; bias, skip and activation where the row is stored
                                            last[xo * dx + xi, (cg * vb + v) * lanes + ci] = acc[xi, v, ci]
                    if projects:
                        for cg, xo in T.grid(VP // vp, PXT):  # P 1x1
                            for xi in T.unroll(px):
                                for v in T.unroll(vp):
                                    for ci in T.vectorized(lanes):
                                        acc[xi, v, ci] = zero
                            for m0 in range(MB // mu):
                                for m1 in T.unroll(mu):
                                    for xi in T.unroll(px):
                                        for v in T.unroll(vp):
                                            for ci in T.vectorized(lanes):
                                                if xo * px + xi < OW:
                                                    acc[xi, v, ci] = acc[xi, v, ci] + mid[xo * px + xi, m0 * mu + m1] * wp[
                                                        cg, 0, 0, m0 * mu + m1, v * lanes + ci]
                            for xi in T.unroll(px):
                                for v in T.unroll(vp):
                                    for ci in T.vectorized(lanes):
                                        if xo * px + xi < OW:
                                            last[xo * px + xi, (cg * vp + v) * lanes + ci] = acc[xi, v, ci]
                    if out_block:  # the row stored in channel blocks (+ bias, + skip, act)
                        for cb, xx in T.grid(O // lanes, OW):
                            for ci in T.vectorized(lanes):
                                out[nb // B, cb, nb % B * th + t, xx, ci] = finish(
                                    last[xx, cb * lanes + ci], bp, bb, skip, nb // B, cb * lanes + ci,
                                    nb % B * th + t, xx)
                    else:  # the row stored NCHW: its channels-last tile transposed
                        for o in range(O):
                            for xx in T.vectorized(OW):
                                out[nb // B, o, nb % B * th + t, xx] = finish(
                                    last[xx, o], bp, bb, skip, nb // B, o, nb % B * th + t, xx)

    return fused


def blocked_io(chain: ConvChain, lanes: int) -> tuple[bool, bool]:
    """(input, output) in channel blocks where a model would store them so (the skip like the output)."""
    return chain.convs[0].in_channels % lanes == 0, chain.out_channels % lanes == 0


def random_arrays(chain: ConvChain, rng: np.random.Generator) -> list[np.ndarray]:
    """Random OIHW weights and biases of the chain's convs, in order (scaled to keep the values O(1))."""
    arrays = []
    for s in chain.convs:
        fan_in = s.in_channels * s.kernel[0] * s.kernel[1]
        arrays += [(rng.standard_normal((s.out_channels, s.in_channels, *s.kernel)) / np.sqrt(fan_in)).astype(
            np.float32), rng.standard_normal(s.out_channels).astype(np.float32)]
    return arrays


def kernel_arguments(chain: ConvChain, arrays: list[np.ndarray], lanes: int) -> list[np.ndarray]:
    """The prepared constants, with a conv_pair's unused projection."""
    prepared = prepare_weights(chain, *arrays, lanes=lanes)
    if len(chain.convs) == 2:
        prepared += [np.zeros((1, 1, 1, 1, 1), np.float32), np.zeros(1, np.float32)]
    return prepared


def build(chain: ConvChain, target, *, seed: int = 0, cold: bool = False):
    """The chain's kernel compiled alone for ``target`` (this host) on random weights, its tensors blocked
    where a model would block them (``blocked_io``): a call with no arguments that runs it once."""
    rng = np.random.default_rng(seed)
    lanes = target.lanes
    prepared = kernel_arguments(chain, random_arrays(chain, rng), lanes)
    in_block, out_block = blocked_io(chain, lanes)
    func = prim_func(chain, lanes, default_bands(chain, target.cores), in_block=in_block, out_block=out_block,
                     skip_block=out_block)
    x_shape, out_shape = io_shapes(chain, lanes, in_block, out_block)
    skip_shape = out_shape if chain.residual else (1,)
    x, skip = (rng.standard_normal(shape).astype(np.float32) for shape in (x_shape, skip_shape))
    return compiled_alone(func, target, [x, *prepared, skip], out_shape, cold=cold)
