"""The fused inverted residual kernel (passes/fuse_blocks.py): expand 1x1 -> act -> depthwise kxk -> act ->
project 1x1 [+ x] as one PrimFunc whose intermediates never leave the cache; or the same up to the second
activation (``PARTIAL_KIND``), where a squeeze-excite follows: its global pool needs the whole depthwise
output before the projection can start, so that part and the projection stay separate kernels.

Compute, with E' and O' the expanded and output channels rounded up to the SIMD width (zero weights:
a padded channel is 0 through every stage, since each supported activation maps 0 to 0):

    mid[n, y, x, e]  = a1(sum_c x[n, c, y - p, x - p] w1[c, e] + b1[e])   inside the map, 0 in the padding
    dw[n, y, x, e]   = a2(sum_{i,j} mid[n, s y + i, s x + j, e] w2[i, j, e] + b2[e])
    proj[n, y, x, o] = sum_e dw[n, y, x, e] w3[e, o]
    out[n, o, y, x]  = proj[n, y, x, o] + b3[o] (+ x[n, o, y, x])

The intermediates are channels-last ([.., E'] contiguous) so every stage is vectorized over channels.
Schedule (``schedule_cpu``): the output is cut into bands of ``th`` rows, one band per parallel iteration;
each band copies the input rows it needs zero-padded, and computes the rows of ``mid`` and ``dw`` it needs
(``compute_at``: TVM infers the halo, s th + k - s rows of mid) into band-sized buffers, each stage as register tiles of ``rx`` columns x one vector of
channels with its epilogue applied per tile (``reverse_compute_at``). The band height trades the halo's
recomputed expand rows ((k - s) / (s th) more of the expand's FLOPs) against the band's buffers, which
should fit in L2; both th and rx are MetaSchedule samples (tuning/tasks.py) whose defaults follow that rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from .activations import activate
from .conv_spec import ConvSpec, optional_block, sample

KIND = "inverted_residual"
PARTIAL_KIND = "expand_depthwise"  # the block up to its second activation, when a squeeze-excite follows


@dataclass(frozen=True)
class InvertedResidual:
    """A matched block: its nodes in order and what the kernel needs to know."""

    nodes: tuple  # the IR nodes E, a1, D, a2[, P[, add]] (empty when built from shapes alone)
    expand: ConvSpec
    depthwise: ConvSpec
    project: ConvSpec | None  # None: the block ends after a2 (a squeeze-excite follows, unfused)
    activations: tuple[str, str]
    residual: bool

    @property
    def kind(self) -> str:
        return KIND if self.project is not None else PARTIAL_KIND

    @property
    def out_channels(self) -> int:
        return (self.project or self.depthwise).out_channels

    @classmethod
    def of(cls, C: int, E: int, O: int | None, H: int, W: int, k: int, stride: int = 1, activation: str = "relu6",
           batch: int = 1) -> "InvertedResidual":
        """A block from its shape alone (calibration, tests); residual when the shapes allow it; O None: the
        expand and depthwise part alone."""
        expand = ConvSpec(batch, C, H, W, E, (1, 1))
        depthwise = ConvSpec(batch, E, H, W, E, (k, k), (stride, stride), (k // 2, k // 2), groups=E)
        project = None if O is None else ConvSpec(batch, E, depthwise.out_height, depthwise.out_width, O, (1, 1))
        return cls((), expand, depthwise, project, (activation, activation), O is not None and stride == 1 and C == O)


SUPPORTED_ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "gelu", "gelu_tanh")  # each maps 0 to 0
CHANNEL_VECTORS = 1  # channel vectors per register tile of the 1x1 stages (with rx columns: the accumulators)
L2_BUDGET = 512 * 1024  # band buffer bytes when the L2 size is not known (half a 1 MB L2: Zen 4, Xeon)


def supports(block) -> str | None:
    """None when the kernel computes ``block``, else why not."""
    if any(a.partition(":")[0] not in SUPPORTED_ACTIVATIONS for a in block.activations):
        return f"activations {block.activations}: the kernel pads channels, which needs act(0) = 0"
    if block.depthwise.kernel[0] > 7:
        return "depthwise kernels up to 7x7"
    return None


def round_up(v: int, m: int) -> int:
    """``v`` rounded up to a multiple of ``m`` (channels to whole vectors)."""
    return (v + m - 1) // m * m


def prepare_weights(block, w1: np.ndarray, b1, w2: np.ndarray, b2, w3: np.ndarray | None = None, b3=None, *,
                    lanes: int) -> list[np.ndarray]:
    """The kernel's constants [w1 [C, E'], b1 [E'], w2 [k, k, E'], b2 [E'], w3 [E', O'], b3 [O']] from the
    convs' OIHW weights and biases (None: no bias; no w3, b3 without a projection)."""
    C, E, O = block.expand.in_channels, block.expand.out_channels, block.out_channels
    Ep, Op = round_up(E, lanes), round_up(O, lanes)
    k = block.depthwise.kernel[0]

    def padded(values, size):
        out = np.zeros(size, np.float32)
        if values is not None:
            out[: len(values)] = values
        return out

    w1_ = np.zeros((C, Ep), np.float32)
    w1_[:, :E] = np.asarray(w1, np.float32).reshape(E, C).T
    w2_ = np.zeros((k, k, Ep), np.float32)
    w2_[:, :, :E] = np.asarray(w2, np.float32).reshape(E, k, k).transpose(1, 2, 0)
    prepared = [w1_, padded(b1, Ep), w2_, padded(b2, Ep)]
    if block.project is None:
        return prepared
    w3_ = np.zeros((Ep, Op), np.float32)
    w3_[:E, :O] = np.asarray(w3, np.float32).reshape(O, E).T
    return prepared + [w3_, padded(b3, Op)]


def compute(x: te.Tensor, w1, b1, w2, b2, w3=None, b3=None, *, block) -> te.Tensor:
    """The block's output [N, O, OH, OW] from input ``x`` [N, C, H, W] and the prepared weights (without a
    projection: the depthwise stage's activations, [N, E, OH, OW])."""
    N, C, H, W = (int(v) for v in x.shape)
    Ep = int(w1.shape[1])
    O = block.out_channels
    k, s = block.depthwise.kernel[0], block.depthwise.stride[0]
    p = k // 2
    OH, OW = block.depthwise.out_height, block.depthwise.out_width
    a1, a2 = block.activations
    zero = tirx.const(0.0, "float32")

    def inside(y, x_):
        return tirx.all(y >= p, y < H + p, x_ >= p, x_ < W + p)

    # the input zero-padded once per band (a copy of its rows), so the expand's inner loop reads without a guard
    x_pad = te.compute((N, C, H + 2 * p, W + 2 * p), lambda n, c, y, x_: tirx.if_then_else(
        inside(y, x_), x[n, c, tirx.max(tirx.min(y - p, H - 1), 0), tirx.max(tirx.min(x_ - p, W - 1), 0)], zero),
        name="x_pad")
    rc = te.reduce_axis((0, C), name="rc")
    mid_acc = te.compute((N, H + 2 * p, W + 2 * p, Ep),
                         lambda n, y, x_, e: te.sum(x_pad[n, rc, y, x_] * w1[rc, e], axis=rc), name="mid_acc")
    mid = te.compute((N, H + 2 * p, W + 2 * p, Ep), lambda n, y, x_, e: tirx.if_then_else(
        inside(y, x_), activate(mid_acc[n, y, x_, e] + b1[e], a1), zero), name="mid")
    ry, rx = te.reduce_axis((0, k), name="ry"), te.reduce_axis((0, k), name="rx")
    dw_acc = te.compute((N, OH, OW, Ep), lambda n, y, x_, e: te.sum(
        mid[n, y * s + ry, x_ * s + rx, e] * w2[ry, rx, e], axis=[ry, rx]), name="dw_acc")
    dw = te.compute((N, OH, OW, Ep), lambda n, y, x_, e: activate(dw_acc[n, y, x_, e] + b2[e], a2), name="dw")
    if block.project is None:
        return te.compute((N, O, OH, OW), lambda n, e, y, x_: dw[n, y, x_, e], name="block_out")
    Op = int(w3.shape[1])
    re_ = te.reduce_axis((0, Ep), name="re")
    proj = te.compute((N, OH, OW, Op), lambda n, y, x_, o: te.sum(dw[n, y, x_, re_] * w3[re_, o], axis=re_),
                      name="proj")
    if block.residual:
        return te.compute((N, O, OH, OW), lambda n, o, y, x_: proj[n, y, x_, o] + b3[o] + x[n, o, y, x_],
                          name="block_out")
    return te.compute((N, O, OH, OW), lambda n, o, y, x_: proj[n, y, x_, o] + b3[o], name="block_out")


def band_heights(OH: int) -> list[int]:
    """Band heights worth trying: the divisors of the output's height (no ragged last band) and powers of 2."""
    return sorted({d for d in range(1, OH + 1) if OH % d == 0} | {c for c in (1, 2, 4, 8, 16) if c <= OH})


def band_rows(block, lanes: int, cores: int = 1, l2_bytes: int = 2 * L2_BUDGET) -> int:
    """The default band height: among ``band_heights`` whose mid and dw buffers fit in half the L2
    (``l2_bytes`` per core: the target's, or the machine profile's measured size) and that leave a band for
    each core, the one computing the fewest expand rows in all (ceil(OH / th) bands of s th + k - s rows: the
    halo recomputed), the tallest of equals."""
    Ep = round_up(block.expand.out_channels, lanes)
    k, s = block.depthwise.kernel[0], block.depthwise.stride[0]
    W = block.expand.width + k - 1
    OH, OW = block.depthwise.out_height, block.depthwise.out_width

    def fits(th):
        return 4 * Ep * ((s * th + k - s) * W + th * OW) <= l2_bytes // 2 and -(-OH // th) >= min(cores, OH)

    candidates = [th for th in band_heights(OH) if fits(th)] or [1]
    return min(candidates, key=lambda th: (-(-OH // th) * (s * th + k - s), -th))


def column_tile(OW: int) -> int:
    return next((t for t in (7, 8, 6, 4) if OW % t == 0), 4)


def schedule_cpu(sch: tvm.s_tir.Schedule, func_name: str | None, target, *, block=None) -> None:
    if func_name is not None:
        sch.work_on(func_name)
    g = lambda name: sch.get_sblock(name, func_name)  # noqa: E731
    lanes = target.lanes
    n, o, y, x = sch.get_loops(g("block_out"))
    OH = int(sch.get(y).extent)
    OW = int(sch.get(x).extent)
    l2 = target.caches.get("L2", 2 * L2_BUDGET)
    th_default = band_rows(block, lanes, target.cores, l2) if block is not None else min(4, OH)
    yo, yi = sch.split(y, [None, sample(sch, band_heights(OH), th_default)])
    sch.reorder(n, yo, o, yi, x)
    band = sch.fuse(n, yo)
    projects = optional_block(sch, "proj", func_name) is not None
    stages = ("proj",) * projects + ("dw", "dw_acc", "mid", "mid_acc", "x_pad")
    for name in stages:  # unit loops kept: a band of one row must give the loops every other height gives
        sch.compute_at(g(name), band, preserve_unit_loops=True)
    sch.parallel(band)
    pad_loops = sch.get_loops(g("x_pad"))
    if int(sch.get(pad_loops[-1]).extent) >= lanes:
        sch.vectorize(sch.split(pad_loops[-1], [None, lanes])[1])
    rx_default = column_tile(OW)
    tiles = [("mid_acc", 1, "mid"), ("dw_acc", 2, "dw")] + ([("proj", 1, None)] if "proj" in stages else [])
    for acc, reductions, epilogue in tiles:
        loops = sch.get_loops(g(acc))
        yy, xx, cc = loops[-3 - reductions: -reductions]
        reduce = loops[-reductions:]
        width = int(sch.get(xx).extent)
        channels = int(sch.get(cc).extent)
        # the 1x1 stages (one reduction) keep two channel vectors per tile where there are: 2 x rx accumulators
        vectors = CHANNEL_VECTORS if reductions == 1 and channels % (CHANNEL_VECTORS * lanes) == 0 else 1
        co, cv, ci = sch.split(cc, [None, vectors, lanes])
        candidates = sorted({t for t in (4, 6, 7, 8) if t <= width} | {min(rx_default, width)})
        xo, xi = sch.split(xx, [None, sample(sch, candidates, min(rx_default, width))])
        sch.reorder(yy, xo, co, *reduce, xi, cv, ci)
        sch.vectorize(ci)
        sch.unroll(cv)
        sch.unroll(xi)
        sch.decompose_reduction(g(acc), reduce[0])
        if epilogue is not None:
            sch.reverse_compute_at(g(epilogue), co, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(g(epilogue))[-1])


def build(block: InvertedResidual, target, *, seed: int = 0):
    """The block's kernel compiled alone for ``target`` (this host) on random weights: a call with no arguments
    that runs it once (calibration times it)."""
    rng = np.random.default_rng(seed)
    C, E, O = block.expand.in_channels, block.expand.out_channels, block.out_channels
    k = block.depthwise.kernel[0]
    shapes = ((E, C), (E,), (E, k, k), (E,)) + (((O, E), (O,)) if block.project is not None else ())
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    prepared = prepare_weights(block, *arrays, lanes=target.lanes)
    spec = block.expand
    x = te.placeholder((spec.batch, C, spec.height, spec.width), name="x")
    weights = [te.placeholder(a.shape, name=f"w{i}") for i, a in enumerate(prepared)]
    out = compute(x, *weights, block=block)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, *weights, out])}))
    schedule_cpu(sch, None, target, block=block)
    target.configure_runtime()
    func = tvm.compile(sch.mod, target=target.tvm)["main"]
    device = target.device()
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in x.shape]).astype(np.float32), device)]
    args += [tvm.runtime.tensor(a, device) for a in prepared]
    args.append(tvm.runtime.empty([int(d) for d in out.shape], "float32", device))
    return lambda: func(*args)
