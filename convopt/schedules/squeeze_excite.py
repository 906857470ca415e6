"""A squeeze-excite and the scale it gates, as one CPU kernel (EfficientNet, MobileNetV3, RegNetY, SE-ResNet):

    s[n, c]          = (1 / HW) sum_{y, x} x[n, c, y, x]              the squeeze: a global mean
    h[n, j]          = a1(sum_c W1[j, c] s[n, c] + b1[j])             the reduce conv, J << C channels
    g[n, c]          = a2(sum_j W2[c, j] h[n, j] + b2[c])             the expand conv and its gate (sigmoid)
    out[n, c, y, x]  = x[n, c, y, x] g[n, c]

Unfused these are four calls (the mean, two matrix-vector products, the multiply), each a few microseconds of
call and thread-pool overhead around very little work at 7-28 px: efficientnet_b0's sixteen of them took
175 us of its 2.1 ms on Zen 5 (2 cores), the matrix-vector products at 2.5-40x their roofline bound.

The kernel (``prim_func``) has two parallel passes over the channel vectors (c in vectors of L lanes, the
rows in bands where there are too few vectors for the cores) and a short serial step between them:

1. each task sums its rows of its channel vector (four partial sums, for the adds' latency), and multiplies
   its L sums into its share of the reduce conv: part[n, vector, band, j] = sum_l s_l W1'[c_l, j], with
   W1' = W1^T / HW (the mean's division folded into the weight). A blocked x is summed a pixel vector at a
   time; an NCHW x along each channel's rows, which are contiguous (vectors across channels would be
   gathers: 21 us against the unfused 7.7 for 96 channels at 56 px). Each band-0 task first prefetches its
   slabs of W1' and W2 into L2 where they are short (``PREFETCH_SLAB_BYTES``): in a model the weights come
   from L3 or memory, in runs of a few KB a task that the hardware prefetcher doesn't ramp up for;
2. serially: h[n, j] = a1(b1[j] + sum over vectors and bands of part): J lanes of vector adds;
3. each task computes the gate of its channel vector (J FMAs in four partial sums, W2 stored [C / L, J, L]
   so that a task reads one contiguous slab) and writes its rows of out = x g: the second read of x is
   mostly from L2, where the first left it.

Where the block ends in its gate (fuse_blocks leaves the multiply to fold_channel_scale, which moves the
gate into the weight of the conv reading x g), the gate is computed serially, a vector at a time, and the
kernel ends by scaling that conv's packed weight along its input-channel axis (``ScaledWeight``): out is the
scaled packed weight, which the conv kernel takes as its weight (backends/conv_kernels.py
``gated_weight_reader``). Unfused, that scaling was a kernel of its own (1.5-2.7 us, 2.7-22x its bound, in
efficientnet_b0). It runs on one core below ``gemv.PARALLEL_WEIGHT_BYTES``.

Reads and writes either layout: x and out NCHW or in channel blocks of L (passes/block_layout.py), each on
its own. Padded channel blocks (C not a multiple of L) are zero in the pad lanes: their W1' rows are zero
and their gate is a2(0), finite, so out's pad lanes stay 0 x g = 0 (NCHW loads of those channels read 0);
a stored gate, and a weight's input channels past C (a lowering's padding), take 0.

fuse_blocks fuses every squeeze-excite it matches (a rule, not a prediction: the same arithmetic and the same
passes over x as the unfused kernels, three calls and thread-pool wake-ups fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from .activations import ACTIVATIONS, PARAMETRIC_ACTIVATIONS, activate
from .conv_spec import ConvSpec
from .fused_block import round_up, vector_bands
from .gemv import PARALLEL_WEIGHT_BYTES
from .tiling import LINE_FLOATS

F32 = "float32"
KIND = "squeeze_excite"
PARTIAL_SUMS = 4  # independent accumulators in the squeeze's sums and the gate's FMAs (latency-bound chains)
# a task prefetches its weight slabs when each is at most this long: a short run (1152 -> 48: 3 KB) ends before
# the hardware prefetcher ramps up; a long one (960 -> 240: 15 KB, 240 lines a weight issued at once) it
# streams itself, and the prefetches only crowd the miss queue (weights cycled through memory: 1152 -> 48 at 7 px
# 21 -> 16.5 us with them, 960 -> 240 33 -> 37 us)
PREFETCH_SLAB_BYTES = 4096
PLACEHOLDER = np.zeros(1, np.float32)  # the packed-weight argument of a kernel that scales no weight


@dataclass(frozen=True)
class SqueezeExcite:
    """A matched squeeze-excite: its nodes in order and what the kernel needs to know."""

    nodes: tuple  # the IR nodes: pool, reduce conv, a1, expand conv, gate[, multiply] (empty when built from shapes)
    reduce: ConvSpec  # [N, C, 1, 1] -> [N, J, 1, 1]
    expand: ConvSpec  # [N, J, 1, 1] -> [N, C, 1, 1]
    height: int  # the map the squeeze pools and the gate scales
    width: int
    activation: str  # a1
    gate: str  # a2
    scales: bool = True  # the block ends in the multiply x g; False: in the gate g (a conv's weight takes it)

    @property
    def kind(self) -> str:
        return KIND

    @property
    def channels(self) -> int:
        return self.reduce.in_channels

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def hidden(self) -> int:
        return self.reduce.out_channels

    @property
    def batch(self) -> int:
        return self.reduce.batch

    @property
    def convs(self) -> tuple[ConvSpec, ...]:
        return (self.reduce, self.expand)

    @classmethod
    def of(cls, C: int, J: int, H: int, W: int, activation: str = "silu", gate: str = "sigmoid",
           batch: int = 1, scales: bool = True) -> "SqueezeExcite":
        """A block from its shape alone (tests, benchmarks)."""
        return cls((), ConvSpec(batch, C, 1, 1, J, (1, 1)), ConvSpec(batch, J, 1, 1, C, (1, 1)), H, W, activation,
                   gate, scales)


@dataclass(frozen=True)
class ScaledWeight:
    """A conv's packed weight that the gate scales along its input-channel axis (passes/fold_channel_scale.py):
    the kernel writes weight * gate there instead of the gate (the conv's input channels are the gate's C
    first, then the lowering's zero padding)."""

    shape: tuple[int, ...]
    axis: int

    @property
    def view(self) -> tuple[int, int, int]:
        """(outer, channels, inner): the weight as three axes around its channel axis."""
        return (int(np.prod(self.shape[:self.axis], dtype=np.int64)), self.shape[self.axis],
                int(np.prod(self.shape[self.axis + 1:], dtype=np.int64)))


def _known(activation: str) -> bool:
    name, _, parameter = activation.partition(":")
    return activation in ACTIVATIONS or (name in PARAMETRIC_ACTIVATIONS and bool(parameter))


def supports(block: SqueezeExcite) -> str | None:
    """None when the kernel computes ``block``, else why not."""
    for activation in (block.activation, block.gate):
        if not _known(activation):
            return f"activation {activation}: the kernel has no {activation}"
    r, e = block.reduce, block.expand
    if (e.in_channels, e.out_channels, e.batch) != (r.out_channels, r.in_channels, r.batch):
        return f"the expand conv {e.describe()} doesn't undo the reduce conv {r.describe()}"
    return None


def prepare_weights(block: SqueezeExcite, w1, b1, w2, b2, *, lanes: int) -> list[np.ndarray]:
    """[W1' [Cp, Jp] = W1^T / HW, b1 [Jp], W2^T [Jp, Cp], b2 [Cp]]: the channels rounded up to whole vectors,
    zero-padded (a missing bias is zero)."""
    C, J = block.channels, block.hidden
    Cp, Jp = round_up(C, lanes), round_up(J, lanes)
    w1p = np.zeros((Cp, Jp), np.float32)
    w1p[:C, :J] = np.asarray(w1, np.float32).reshape(J, C).T / (block.height * block.width)
    w2p = np.zeros((Jp, Cp), np.float32)
    w2p[:J, :C] = np.asarray(w2, np.float32).reshape(C, J).T
    w2p = np.ascontiguousarray(w2p.reshape(Jp, Cp // lanes, lanes).transpose(1, 0, 2))  # [Cp / L, Jp, L]
    b1p, b2p = np.zeros(Jp, np.float32), np.zeros(Cp, np.float32)
    if b1 is not None:
        b1p[:J] = b1
    if b2 is not None:
        b2p[:C] = b2
    return [w1p, b1p, w2p, b2p]


def io_shapes(block: SqueezeExcite, lanes: int, in_block: bool = False, out_block: bool = False,
              scaled_weight: ScaledWeight | None = None):
    """(x's shape, out's shape): NCHW, or [N, Cp / L, H, W, L] where blocked; out is one pixel where the block
    ends in the gate, the packed weight's shape where the gate scales it."""
    N, C, H, W = block.batch, block.channels, block.height, block.width
    if scaled_weight is not None:
        return (N, round_up(C, lanes) // lanes, H, W, lanes) if in_block else (N, C, H, W), scaled_weight.shape

    def shape(blocked: bool, h: int, w: int):
        return (N, round_up(C, lanes) // lanes, h, w, lanes) if blocked else (N, C, h, w)

    return shape(in_block, H, W), shape(out_block, *((H, W) if block.scales else (1, 1)))


def default_bands(block: SqueezeExcite, cores: int, lanes: int) -> int:
    """Row bands per channel vector (fused_block.vector_bands)."""
    return vector_bands(block.batch * round_up(block.channels, lanes) // lanes, block.height, cores)


def prim_func(block: SqueezeExcite, lanes: int, bands: int = 1, *, in_block: bool = False,
              out_block: bool = False, scaled_weight: ScaledWeight | None = None) -> tirx.PrimFunc:
    """The kernel: arguments x, the prepared weights (``prepare_weights``), the packed weight the gate scales
    (``scaled_weight``; else a [1] placeholder) and out (``io_shapes``)."""
    if scaled_weight is not None and (block.scales or block.batch != 1):
        raise ValueError("only a squeeze-excite of batch 1 that ends in its gate scales a conv's weight")
    N, C, H, W = block.batch, block.channels, block.height, block.width
    L, U = lanes, PARTIAL_SUMS
    Cp, Jp = round_up(C, L), round_up(block.hidden, L)
    V, B = Cp // L, bands
    th = -(-H // B)  # rows per band
    Wu = W // U * U  # columns summed U at a time; the rest one at a time
    a1, a2, scales = block.activation, block.gate, block.scales
    zero = tirx.const(0.0, F32)
    x_shape, out_shape = io_shapes(block, L, in_block, out_block, scaled_weight)
    packed_shape = scaled_weight.shape if scaled_weight is not None else (1,)
    # the packed weight seen as [outer, Cw, inner] around its input-channel axis (it is contiguous)
    outer, Cw, inner = scaled_weight.view if scaled_weight is not None else (1, 1, 1)
    serial_scaling = 4 * outer * Cw * inner < PARALLEL_WEIGHT_BYTES
    prefetches = 4 * L * Jp <= PREFETCH_SLAB_BYTES

    def load(x, n, v, l, y, col):  # x[n, v L + l, y, col] in its layout; 0 for an NCHW pad channel
        if in_block:  # (indexed by the vector and the lane, not c // L and c % L: a gather where unsimplified)
            return x[n, v, y, col, l]
        c = v * L + l
        if C % L:
            return tirx.if_then_else(c < C, x[n, tirx.min(c, C - 1), y, col], zero)
        return x[n, c, y, col]

    def gated(value, c):  # a gate stored alone: 0 in a pad lane (a padded block's pad lanes are zeros)
        return tirx.if_then_else(c < C, value, zero) if C % L else value

    @T.macro
    def gate_of(g, hidden, w2, b2, n, v):  # g[0, :] = the gate of vector v (J FMAs in U partial sums)
        for u in T.unroll(U):
            for l in T.vectorized(L):
                g[u, l] = zero
        for j in range(Jp // U):
            for u in T.unroll(U):
                for l in T.vectorized(L):
                    g[u, l] = g[u, l] + hidden[n, j * U + u] * w2[v, j * U + u, l]
        for l in T.vectorized(L):
            g[0, l] = gated(activate(b2[v * L + l] + g[0, l] + g[1, l] + g[2, l] + g[3, l], a2), v * L + l)

    @T.prim_func(s_tir=False)
    def fused(x: T.Buffer(x_shape, F32), w1: T.Buffer((Cp, Jp), F32), b1: T.Buffer((Jp,), F32),
              w2: T.Buffer((V, Jp, L), F32), b2: T.Buffer((Cp,), F32), packed: T.Buffer(packed_shape, F32),
              out: T.Buffer(out_shape, F32)):
        T.func_attr({"tirx.noalias": True})
        part = T.alloc_buffer((N, V, B, Jp), F32)  # each task's share of the reduce conv
        hidden = T.alloc_buffer((N, Jp), F32)
        gates = T.alloc_buffer((max(Cw, Cp),), F32)  # (used where the gate scales a weight)
        for t in T.parallel(N * V * B):  # the squeeze and the reduce conv's shares
            if prefetches:  # the task's slabs of both weights on their way to L2 (PREFETCH_SLAB_BYTES)
                if t % B == 0:
                    for f in range(L * Jp // LINE_FLOATS):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                            w1[t // B % V * L + f * LINE_FLOATS // Jp, f * LINE_FLOATS % Jp]), 0, 2, 1))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                            w2[t // B % V, f * LINE_FLOATS // L, f * LINE_FLOATS % L]), 0, 2, 1))
            acc = T.alloc_buffer((U, L), F32, scope="local")
            for u in T.unroll(U):
                for l in T.vectorized(L):
                    acc[u, l] = zero
            if in_block:  # a vector of channels a pixel: lane l sums channel v L + l
                for r in range(th):
                    if t % B * th + r < H:
                        for q in range(Wu // U):
                            for u in T.unroll(U):
                                for l in T.vectorized(L):
                                    acc[u, l] = acc[u, l] + load(x, t // (V * B), t // B % V, l, t % B * th + r,
                                                                 q * U + u)
                        for col in range(W - Wu):
                            for l in T.vectorized(L):
                                acc[0, l] = acc[0, l] + load(x, t // (V * B), t // B % V, l, t % B * th + r,
                                                             Wu + col)
                for l in T.vectorized(L):
                    acc[0, l] = acc[0, l] + acc[1, l] + acc[2, l] + acc[3, l]
            else:  # NCHW: a channel's rows of the band are contiguous, summed in vectors along them
                flat = T.decl_buffer((N * C * H * W,), F32, data=x.data)
                sums = T.alloc_buffer((U, L), F32, scope="local")
                for l in range(L):
                    if t // B % V * L + l < C:
                        for u in T.unroll(U):
                            for k in T.vectorized(L):
                                sums[u, k] = zero
                        for q in range(T.min(H - t % B * th, th) * W // (U * L)):
                            for u in T.unroll(U):
                                for k in T.vectorized(L):
                                    sums[u, k] = sums[u, k] + flat[((t // (V * B) * C + t // B % V * L + l) * H
                                                                    + t % B * th) * W + (q * U + u) * L + k]
                        for q in range(T.min(H - t % B * th, th) * W % (U * L)):
                            sums[0, 0] = sums[0, 0] + flat[((t // (V * B) * C + t // B % V * L + l) * H
                                                            + t % B * th) * W
                                                           + T.min(H - t % B * th, th) * W // (U * L) * (U * L) + q]
                        for u, k in T.grid(U, L):
                            acc[0, l] = acc[0, l] + sums[u, k]
            # (vectors of L along J: a loop vectorized over all of J, 240 for MobileNetV3's 960 channels, is one
            # LLVM vector that wide, legalized badly: 960 -> 240 at 7 px took 33-43 us against 13-14 so)
            for jb in range(Jp // L):
                for j in T.vectorized(L):
                    part[t // (V * B), t // B % V, t % B, jb * L + j] = zero
            for l in range(L):
                for jb in range(Jp // L):
                    for j in T.vectorized(L):
                        part[t // (V * B), t // B % V, t % B, jb * L + j] = (
                            part[t // (V * B), t // B % V, t % B, jb * L + j]
                            + acc[0, l] * w1[t // B % V * L + l, jb * L + j])
        for n in range(N):  # the reduce conv's sums and a1
            for jb in range(Jp // L):
                for j in T.vectorized(L):
                    hidden[n, jb * L + j] = b1[jb * L + j]
                for v, b in T.grid(V, B):
                    for j in T.vectorized(L):
                        hidden[n, jb * L + j] = hidden[n, jb * L + j] + part[n, v, b, jb * L + j]
                for j in T.vectorized(L):
                    hidden[n, jb * L + j] = activate(hidden[n, jb * L + j], a1)
        if scales:
            for t in T.parallel(N * V * B):  # the gate of the task's channel vector, and its rows scaled
                g = T.alloc_buffer((U, L), F32, scope="local")
                gate_of(g, hidden, w2, b2, t // (V * B), t // B % V)
                for r in range(th):
                    if t % B * th + r < H:
                        if out_block:
                            for col in range(W):
                                for l in T.vectorized(L):
                                    out[t // (V * B), t // B % V, t % B * th + r, col, l] = load(
                                        x, t // (V * B), t // B % V, l, t % B * th + r, col) * g[0, l]
                        else:
                            for l in range(L):
                                if t // B % V * L + l < C:
                                    for col in T.vectorized(W):
                                        out[t // (V * B), t // B % V * L + l, t % B * th + r, col] = load(
                                            x, t // (V * B), t // B % V, l, t % B * th + r, col) * g[0, l]
        else:
            for n, v in T.grid(N, V):  # the gate alone: serially, a vector of channels at a time
                g = T.alloc_buffer((U, L), F32, scope="local")
                gate_of(g, hidden, w2, b2, n, v)
                if scaled_weight is not None:
                    for l in range(L):
                        if v * L + l < Cw:
                            gates[v * L + l] = g[0, l]
                elif out_block:
                    for l in T.vectorized(L):
                        out[n, v, 0, 0, l] = g[0, l]
                else:
                    for l in range(L):
                        if v * L + l < C:
                            out[n, v * L + l, 0, 0] = g[0, l]
            if scaled_weight is not None:  # the packed weight times the gate along its input channels
                if Cw > Cp:  # the lowering's own padding beyond whole vectors: weights of zero inputs
                    for c in range(Cp, Cw):
                        gates[c] = zero
                weight = T.decl_buffer((outer, Cw, inner), F32, data=packed.data)
                scaled = T.decl_buffer((outer, Cw, inner), F32, data=out.data)
                if serial_scaling:
                    for t in range(outer * Cw):
                        for i in T.vectorized(inner):
                            scaled[t // Cw, t % Cw, i] = weight[t // Cw, t % Cw, i] * gates[t % Cw]
                else:
                    for t in T.parallel(outer * Cw):
                        for i in T.vectorized(inner):
                            scaled[t // Cw, t % Cw, i] = weight[t // Cw, t % Cw, i] * gates[t % Cw]

    return fused


def random_arrays(block: SqueezeExcite, rng: np.random.Generator) -> list[np.ndarray]:
    """Random [w1, b1, w2, b2] of the block's convs, as the model holds them (OIHW)."""
    C, J = block.channels, block.hidden
    arrays = [rng.standard_normal((J, C, 1, 1)) / np.sqrt(C), rng.standard_normal(J),
              rng.standard_normal((C, J, 1, 1)) / np.sqrt(J), rng.standard_normal(C)]
    return [a.astype(np.float32) for a in arrays]


def build(block: SqueezeExcite, target, *, seed: int = 0, cold: bool = False):
    """The kernel compiled alone for ``target`` (this host) on random weights, x and out in channel blocks (as
    a model stores them between convs): a call with no arguments that runs it once (benchmarks)."""
    from .fused_block import compiled_alone

    rng = np.random.default_rng(seed)
    lanes = target.lanes
    prepared = prepare_weights(block, *random_arrays(block, rng), lanes=lanes)
    func = prim_func(block, lanes, default_bands(block, target.cores, lanes), in_block=True, out_block=True)
    x_shape, out_shape = io_shapes(block, lanes, True, True)
    x = rng.standard_normal(x_shape).astype(np.float32)
    return compiled_alone(func, target, [x, *prepared, PLACEHOLDER], out_shape, cold=cold)
