"""The fused pointwise MLP kernel (passes/fuse_blocks.py): 1x1 expand -> act -> 1x1 project [+ skip] as one
PrimFunc whose expanded intermediate (E channels, typically 4x the block's) never leaves the cache. This is
the channel MLP of ConvNeXt, InceptionNeXt, PoolFormer/MetaFormer, RepViT and FastViT blocks; its skip is
any tensor of the output's shape (in ConvNeXt the block's input, read before its depthwise conv and norm,
which stay separate kernels: they move C channels, the MLP's intermediate 4C).

Compute, with E' and O' the channels rounded up to the SIMD width (zero weights; every supported activation
maps 0 to 0, so a padded channel stays 0):

    mid[n, y, x, e]  = act(sum_c x[n, c, y, x] w1[c, e] + b1[e])
    out[n, o, y, x]  = sum_e mid[n, y, x, e] w3[e, o] + b3[o] (+ skip[n, o, y, x])

Loop structure (``prim_func``): the rows are cut into bands, one per parallel iteration (one per core); a
band walks its rows, and each row goes through a channels-last row buffer [W, E'] (W E' floats: 36 KB for
160 channels at 56 px, in L1/L2), then the projection's row [W, O'], stored in the output's layout. Both
stages run as register tiles of ``fused_block.column_tile`` columns x one or two channel vectors (the rule
the inverted residual kernel uses), the expand's bias added per tile and its activation in a pass over
the row (GELU's polynomial inside the tile spilled the accumulators), the projection's bias and the skip
where the row is stored. Unlike the separate convs, the intermediate is never stored: the unfused expand
writes and the projection reads E H W floats each. Each row streams both weight matrices once per column
tile of the row; where they exceed half of L2 (wide late stages) that costs more than the intermediate
saves, and the cost model (cost/fused.py, which counts one read per row there) declines such blocks.

Written out in TVMScript for the same reason as schedules/fused_block.py, and like it not a tuning task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from .activations import activate
from .conv_spec import ConvSpec
from .fused_block import SUPPORTED_ACTIVATIONS, channel_vectors, column_tile, compiled_alone, padded_vector, round_up

F32 = "float32"
KIND = "pointwise_mlp"


@dataclass(frozen=True)
class PointwiseMLP:
    """A matched block: its nodes in order and what the kernel needs to know."""

    nodes: tuple  # the IR nodes fc1, act, fc2[, add] (empty when built from shapes alone)
    expand: ConvSpec
    project: ConvSpec
    activation: str
    residual: bool  # + skip, the add's other operand (any tensor of the output's type)
    kind = KIND

    @property
    def out_channels(self) -> int:
        return self.project.out_channels

    @property
    def convs(self) -> tuple[ConvSpec, ...]:
        return (self.expand, self.project)

    @classmethod
    def of(cls, C: int, E: int, O: int, H: int, W: int, activation: str = "gelu", residual: bool = True,
           batch: int = 1) -> "PointwiseMLP":
        """A block from its shape alone (calibration, tests)."""
        return cls((), ConvSpec(batch, C, H, W, E, (1, 1)), ConvSpec(batch, E, H, W, O, (1, 1)), activation, residual)


def supports(block: PointwiseMLP) -> str | None:
    """None when the kernel computes ``block``, else why not."""
    if block.activation.partition(":")[0] not in SUPPORTED_ACTIVATIONS:
        return f"activation {block.activation}: the kernel pads channels, which needs act(0) = 0"
    return None


def prepare_weights(block: PointwiseMLP, w1: np.ndarray, b1, w3: np.ndarray, b3, *, lanes: int) -> list[np.ndarray]:
    """The kernel's constants [w1 [C, E'], b1 [E'], w3 [E', O'], b3 [O']] from the convs' OIHW weights and
    biases (None: no bias)."""
    C, E, O = block.expand.in_channels, block.expand.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    w1_ = np.zeros((C, Ep), np.float32)
    w1_[:, :E] = np.asarray(w1, np.float32).reshape(E, C).T
    w3_ = np.zeros((Ep, Op), np.float32)
    w3_[:E, :O] = np.asarray(w3, np.float32).reshape(O, E).T
    return [w1_, padded_vector(b1, Ep), w3_, padded_vector(b3, Op)]


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


def prim_func(block: PointwiseMLP, lanes: int, bands: int = 1, *, in_block: bool = False, out_block: bool = False,
              skip_block: bool = False) -> tirx.PrimFunc:
    """The block's kernel: arguments x, w1, b1, w3, b3 (``prepare_weights``), skip and out. ``in_block`` /
    ``skip_block`` / ``out_block``: that tensor stored in channel blocks of ``lanes``, [N, C/lanes, H, W,
    lanes] (passes/block_layout.py). Without a residual, skip is an unused 1-element buffer."""
    e_ = block.expand
    N, C, H, W = e_.batch, e_.in_channels, e_.height, e_.width
    E, O = e_.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    th = -(-H // bands)  # rows per band
    B = -(-H // th)
    act, residual = block.activation, block.residual
    EV, OV = Ep // lanes, Op // lanes  # channel vectors
    ev, ov = channel_vectors(EV), channel_vectors(OV)  # per register tile: expand, project
    rx, px = column_tile(W, lanes, ev), column_tile(W, lanes, ov)  # its columns
    XT, PXT = -(-W // rx), -(-W // px)
    zero = tirx.const(0.0, F32)
    x_shape, out_shape = io_shapes(block, lanes, in_block, out_block)
    skip_shape = io_shapes(block, lanes, False, skip_block)[1] if residual else (1,)

    def load(buffer, blocked, n, c, y, x_):  # buffer[n, c, y, x_] in either layout
        return buffer[n, c // lanes, y, x_, c % lanes] if blocked else buffer[n, c, y, x_]

    @T.prim_func(s_tir=False)
    def fused(x: T.Buffer(x_shape, F32), w1: T.Buffer((C, Ep), F32), b1: T.Buffer((Ep,), F32),
              w3: T.Buffer((Ep, Op), F32), b3: T.Buffer((Op,), F32), skip: T.Buffer(skip_shape, F32),
              out: T.Buffer(out_shape, F32)):
        T.func_attr({"tirx.noalias": True})
        for nb in T.parallel(N * B):  # one band of one image per iteration
            mid = T.alloc_buffer((W, Ep), F32)  # one row of act(expand), channels-last
            proj_row = T.alloc_buffer((W, Op), F32)
            acc = T.alloc_buffer((8, 2, lanes), F32, scope="local")  # a register tile
            for t in range(th):
                if nb % B * th + t < H:
                    for cg, xo in T.grid(EV // ev, XT):  # expand 1x1 -> act, one row
                        for xi in T.unroll(rx):
                            for v in T.unroll(ev):
                                for ci in T.vectorized(lanes):
                                    acc[xi, v, ci] = zero
                        for c in range(C):
                            for xi in T.unroll(rx):
                                for v in T.unroll(ev):
                                    for ci in T.vectorized(lanes):
                                        if xo * rx + xi < W:
                                            acc[xi, v, ci] = acc[xi, v, ci] + load(
                                                x, in_block, nb // B, c, nb % B * th + t, xo * rx + xi
                                            ) * w1[c, (cg * ev + v) * lanes + ci]
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
                        for e in range(Ep):
                            for xi in T.unroll(px):
                                for v in T.unroll(ov):
                                    for ci in T.vectorized(lanes):
                                        if xo * px + xi < W:
                                            acc[xi, v, ci] = acc[xi, v, ci] + mid[xo * px + xi, e] * w3[
                                                e, (cg * ov + v) * lanes + ci]
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


def build(block: PointwiseMLP, target, *, seed: int = 0):
    """The block's kernel compiled alone for ``target`` (this host) on random weights, its tensors blocked
    where a model would block them (``blocked_io``): a call with no arguments that runs it once."""
    rng = np.random.default_rng(seed)
    C, E, O, lanes = block.expand.in_channels, block.expand.out_channels, block.out_channels, target.lanes
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((E, C), (E,), (O, E), (O,))]
    prepared = prepare_weights(block, *arrays, lanes=lanes)
    in_block, out_block = blocked_io(block, lanes)
    func = prim_func(block, lanes, default_bands(block, target.cores), in_block=in_block, out_block=out_block,
                     skip_block=out_block)
    x_shape, out_shape = io_shapes(block, lanes, in_block, out_block)
    skip_shape = out_shape if block.residual else (1,)
    x, skip = (rng.standard_normal(shape).astype(np.float32) for shape in (x_shape, skip_shape))
    return compiled_alone(func, target, [x, *prepared, skip], out_shape)
