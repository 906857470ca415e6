"""InceptionNeXt's token mixer as one CPU kernel:

    x_0, x_1, ..., x_P = split(x, channels)          out = cat(x_0, dw_1(x_1), ..., dw_P(x_P))

each part passed as it is or through a depthwise conv of its own (odd kernel, "same" padding, stride 1:
InceptionNeXt's 3x3, 1x11 and 11x1 branches). The parts together are one depthwise conv over all C channels,
its k x k kernel (k the largest extent) holding each part's kernel centred and a passed part's centre tap 1
(backends/conv_kernels.py ``mixer_arrays``; fused_mlp.py computes the same conv before an MLP). Computed as
that conv over all k x k taps it would do 121 taps for 11 of a part's; so each channel vector has its own tap
list (the taps where some channel of the vector has a nonzero weight) and computes only those, the parts' own
work (up to the vectors that straddle two parts).

Unfused these are a split, a conv per branch and a cat: five kernels each a few microseconds at 7 px, where the
whole InceptionNeXt block is not fused (its MLP is predicted faster unfused): inception_next_atto's stage-4
mixer (320 channels, four parts of 80 at 7 x 7) took 2.0 + 3 x 2.2 + 2.5 us a block on Zen 5 (2 cores),
its depthwise convs at 5.4-6.3x their roofline bound.

Schedule: [parallel] (n, channel vector, row band) > [the band's rows of the vector's channels copied into a
plane with a zero border: no bounds checks at the taps] > rows > column tiles of ``COLUMN_TILE`` > taps (those
of the vector's list) > unroll(columns) > vectorize(lanes): a register tile of D vectors of L channels. Reads and writes either layout; NCHW loads are gathers across channels (the block sits
between blocked convs in the models that have it: passes/block_layout.py). Padded channel blocks: the pad
lanes' weights and bias are 0, so they stay 0.

fuse_blocks fuses it by rule (one kernel of the same arithmetic, four calls fewer), as the part of an
InceptionNeXt block left when the whole block is not fused, or alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from .conv_spec import ConvSpec
from .fused_block import round_up, vector_bands

F32, I32 = "float32", "int32"
KIND = "token_mixer"
COLUMN_TILE = 8  # output columns a register tile: 8 accumulators of one vector each (16 ymm / 32 zmm)


@dataclass(frozen=True)
class TokenMixer:
    """A matched token mixer: its nodes (split, getitems, convs, cat, in graph order) and the one depthwise conv
    that computes it."""

    nodes: tuple
    mixer: ConvSpec  # [N, C, H, W] -> [N, C, H, W], k x k, "same" padding, groups = C
    channel_taps: int = 0  # the branches' taps summed over their channels (the useful multiply-adds a pixel)

    @property
    def kind(self) -> str:
        return KIND

    @property
    def macs(self) -> int:
        """The branches' own multiply-adds (not the k x k conv's): what a report counts as the kernel's work."""
        m = self.mixer
        return m.batch * m.height * m.width * self.channel_taps

    @property
    def convs(self) -> tuple[ConvSpec, ...]:
        return (self.mixer,)

    @property
    def channels(self) -> int:
        return self.mixer.in_channels

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def batch(self) -> int:
        return self.mixer.batch

    @classmethod
    def of(cls, C: int, H: int, W: int, k: int, batch: int = 1) -> "TokenMixer":
        """A mixer from its shape alone (tests, benchmarks)."""
        return cls((), ConvSpec(batch, C, H, W, C, (k, k), padding=(k // 2, k // 2), groups=C))


def prepare_weights(block: TokenMixer, weight, bias, *, lanes: int) -> list[np.ndarray]:
    """[wd [k, k, Cp], bd [Cp], taps [Cp / L, 1 + k k] (int32)] from the merged conv's weight [C, 1, k, k] and
    bias [C]: channels-last weights zero-padded to whole vectors, and each vector's tap list: its count, then
    i k + j of each tap where one of the vector's channels has a nonzero weight."""
    C, (k, _) = block.channels, block.mixer.kernel
    Cp = round_up(C, lanes)
    wd = np.zeros((k, k, Cp), np.float32)
    wd[:, :, :C] = np.asarray(weight, np.float32).reshape(C, k, k).transpose(1, 2, 0)
    bd = np.zeros(Cp, np.float32)
    bd[:C] = np.asarray(bias, np.float32)
    used = np.any(wd.reshape(k * k, Cp // lanes, lanes) != 0, axis=2).T  # [vectors, k k]
    taps = np.zeros((Cp // lanes, 1 + k * k), np.int32)
    for v, row in enumerate(used):
        (flat,) = np.nonzero(row)
        taps[v, 0], taps[v, 1:1 + len(flat)] = len(flat), flat
    return [wd, bd, taps]


def io_shapes(block: TokenMixer, lanes: int, in_block: bool = False, out_block: bool = False):
    """(x's shape, out's shape): NCHW, or [N, Cp / L, H, W, L] where blocked."""
    m = block.mixer
    N, C, H, W = m.batch, m.in_channels, m.height, m.width

    def shape(blocked: bool):
        return (N, round_up(C, lanes) // lanes, H, W, lanes) if blocked else (N, C, H, W)

    return shape(in_block), shape(out_block)


def default_bands(block: TokenMixer, cores: int, lanes: int) -> int:
    """Row bands per channel vector (fused_block.vector_bands)."""
    return vector_bands(block.batch * round_up(block.channels, lanes) // lanes, block.mixer.height, cores)


def prim_func(block: TokenMixer, lanes: int, bands: int = 1, *, in_block: bool = False,
              out_block: bool = False) -> tirx.PrimFunc:
    """The kernel: arguments x, wd, bd, taps (``prepare_weights``) and out (``io_shapes``)."""
    m = block.mixer
    N, C, H, W = m.batch, m.in_channels, m.height, m.width
    k, p = m.kernel[0], m.kernel[0] // 2
    L = lanes
    Cp = round_up(C, L)
    V, B = Cp // L, bands
    th = -(-H // B)  # rows per band
    D = min(W, COLUMN_TILE)
    XT = -(-W // D)
    zero = tirx.const(0.0, F32)
    x_shape, out_shape = io_shapes(block, L, in_block, out_block)

    def load(x, n, v, l, y, col):  # x[n, v L + l, y, col] in its layout; 0 for an NCHW pad channel
        if in_block:
            return x[n, v, y, col, l]
        if C % L:
            return tirx.if_then_else(v * L + l < C, x[n, tirx.min(v * L + l, C - 1), y, col], zero)
        return x[n, v * L + l, y, col]

    @T.prim_func(s_tir=False)
    def mixer(x: T.Buffer(x_shape, F32), wd: T.Buffer((k, k, Cp), F32), bd: T.Buffer((Cp,), F32),
              taps: T.Buffer((V, 1 + k * k), I32), out: T.Buffer(out_shape, F32)):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(N * V * B):  # t = (n, vector, band)
            # the band's rows of the vector's channels with a zero border of p (and whole column tiles): the taps
            # read it without a bounds check
            plane = T.alloc_buffer((th + 2 * p, XT * D + 2 * p, L), F32)
            acc = T.alloc_buffer((D, L), F32, scope="local")
            for r, col in T.grid(th + 2 * p, XT * D + 2 * p):
                for l in T.vectorized(L):
                    plane[r, col, l] = zero
            for r in range(th + 2 * p):
                if T.And(t % B * th + r >= p, t % B * th + r < H + p):
                    for col in range(W):
                        for l in T.vectorized(L):
                            plane[r, col + p, l] = load(x, t // (V * B), t // B % V, l, t % B * th + r - p, col)
            for r in range(th):
                if t % B * th + r < H:
                    for xo in range(XT):
                        for xi in T.unroll(D):
                            for l in T.vectorized(L):
                                acc[xi, l] = bd[t // B % V * L + l]
                        for q in range(taps[t // B % V, 0]):  # the vector's taps, i k + j each
                            for xi in T.unroll(D):
                                for l in T.vectorized(L):
                                    acc[xi, l] = acc[xi, l] + plane[
                                        r + taps[t // B % V, 1 + q] // k, xo * D + xi + taps[t // B % V, 1 + q] % k, l
                                    ] * wd[taps[t // B % V, 1 + q] // k, taps[t // B % V, 1 + q] % k, t // B % V * L + l]
                        for xi in T.unroll(D):
                            if xo * D + xi < W:
                                if out_block:
                                    for l in T.vectorized(L):
                                        out[t // (V * B), t // B % V, t % B * th + r, xo * D + xi, l] = acc[xi, l]
                                else:
                                    for l in range(L):
                                        if t // B % V * L + l < C:
                                            out[t // (V * B), t // B % V * L + l, t % B * th + r,
                                                xo * D + xi] = acc[xi, l]

    return mixer


def random_arrays(block: TokenMixer, rng: np.random.Generator, parts=None) -> list[np.ndarray]:
    """A merged [weight [C, 1, k, k], bias [C]] as mixer_arrays builds it: ``parts`` ((channels, kh, kw), ...)
    in order, a (c, 1, 1) part passed as it is (centre tap 1, bias 0); default four equal parts, one passed and
    k x k, 1 x k, k x 1 convs."""
    C, k = block.channels, block.mixer.kernel[0]
    parts = parts or ((C - 3 * (C // 4), 1, 1), (C // 4, min(3, k), min(3, k)), (C // 4, 1, k), (C // 4, k, 1))
    weight, bias, offset = np.zeros((C, 1, k, k), np.float32), np.zeros(C, np.float32), 0
    for channels, kh, kw in parts:
        window = (slice(offset, offset + channels), 0, slice((k - kh) // 2, (k + kh) // 2),
                  slice((k - kw) // 2, (k + kw) // 2))
        if (kh, kw) == (1, 1):
            weight[window] = 1.0
        else:
            weight[window] = rng.standard_normal((channels, kh, kw)) / np.sqrt(kh * kw)
            bias[offset:offset + channels] = rng.standard_normal(channels)
        offset += channels
    return [weight, bias]
