"""What every conv lowering shares: the conv's shape (``ConvSpec``), the lowering contract (``Lowering``),
the fused epilogue, zero padding and a default CUDA schedule.

A lowering is one ``Lowering`` instance (a module of ``convopt/schedules/`` defines it; Winograd F(2,3) and
F(4,3) are two instances of one module's functions):

    name                                                        e.g. "im2col"
    supports(spec) -> str | None                                None, or why this lowering can't run spec
    workspace_bytes(spec, lanes) -> int                         bytes of intermediate buffers it allocates
    prepare_weight(weight, spec, lanes) -> tuple[np.ndarray, ...]   OIHW fp32 weight -> constants, once
    compute(data, *prepared, bias=None, residual=None, spec, activation, lanes, out_block=None) -> te.Tensor
    schedule_cpu(sch, func_name, target) / schedule_cuda(sch, func_name, target)
    writes_blocked                                              whether compute takes an ``out_block``
    blocked_io(spec, lanes) -> bool                             whether it reads and writes blocked tensors
                                                                as whole vectors of channels (full speed)
    codegen_version                                             the version of the code built after its
                                                                schedule (tuning records older are stale)
    weight_channel_axis                                         the packed weight's input-channel axis, or
                                                                None (a run-time scale per input channel)

``compute`` returns the output after ``epilogue`` (bias, residual add, activation); its last block is
named ``OUTPUT_BLOCK``. The output is NCHW, or with ``out_block`` = b the blocked layout [N, O/b, OH, OW, b]
(ir/layout.py), and then a residual comes in that layout too. ``data`` is anything indexed as NCHW
``data[n, c, y, x]`` with ``.shape`` and ``.dtype``: a te.Tensor, or ``BlockedView`` of a blocked one, so
every lowering reads either layout through the same compute. ``lanes`` is the fp32 SIMD width the data
layout is blocked for (``Target.lanes``: 16 with AVX-512, 8 with AVX2, 1 on CUDA). Schedules work in place on a
``tvm.s_tir.Schedule`` over a module holding the PrimFunc ``func_name``, for a ``convopt.target.Target``.
The table of lowerings is ``convopt.schedules.lowerings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import tvm
from tvm import te, tirx

from ..ir.graph import Graph, Node
from ..ir.ops import Op
from . import tiling
from .activations import activate

OUTPUT_BLOCK = "conv_out"
_KEY = re.compile(r"n(\d+) c(\d+) (\d+)x(\d+) o(\d+) k(\d+)x(\d+) s(\d+)x(\d+) p(\d+)x(\d+) d(\d+)x(\d+) g(\d+)")


@dataclass(frozen=True)
class ConvSpec:
    """An NCHW fp32 2-D convolution: symmetric padding (ph, pw), as the IR's Conv2dAttrs."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"channels {self.in_channels}->{self.out_channels} not divisible by groups {self.groups}")
        if self.out_height <= 0 or self.out_width <= 0:
            raise ValueError(f"empty output for {self}")

    @classmethod
    def of(cls, input_shape, weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1) -> "ConvSpec":
        n, c, h, w = (int(v) for v in input_shape)
        o, _, kh, kw = (int(v) for v in weight_shape)
        return cls(n, c, h, w, o, (kh, kw), tuple(stride), tuple(padding), tuple(dilation), int(groups))

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels and self.in_per_group == 1

    @property
    def macs(self) -> int:
        """Multiply-adds of the direct definition."""
        return (self.batch * self.out_channels * self.out_height * self.out_width
                * self.in_per_group * self.kernel[0] * self.kernel[1])

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    def key(self) -> str:
        """Every field as text: the key of tables of measurements by conv shape (describe() is shorter)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (f"n{self.batch} c{self.in_channels} {self.height}x{self.width} o{self.out_channels} k{kh}x{kw} "
                f"s{sh}x{sw} p{ph}x{pw} d{dh}x{dw} g{self.groups}")

    @classmethod
    def from_key(cls, key: str) -> "ConvSpec":
        """The spec whose ``key()`` is ``key``."""
        match = _KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"not a conv spec key: {key!r}")
        v = [int(g) for g in match.groups()]
        return cls(v[0], v[1], v[2], v[3], v[4], (v[5], v[6]), (v[7], v[8]), (v[9], v[10]), (v[11], v[12]), v[13])

    def describe(self) -> str:
        kh, kw = self.kernel
        extra = "".join([f" s{self.stride[0]}" if self.stride != (1, 1) else "",
                         f" d{self.dilation[0]}" if self.dilation != (1, 1) else "",
                         " dw" if self.is_depthwise else (f" g{self.groups}" if self.groups > 1 else "")])
        return f"{self.in_channels}->{self.out_channels} {kh}x{kw}{extra} @{self.height}x{self.width}"


def conv_spec_of(graph: Graph, node: Node) -> ConvSpec | None:
    """The conv's shape when convopt compiles it with its own kernels (fp32, a constant weight, or one scaled per
    input channel at run time: ``scaled_weight``, and a constant bias), else None: the one home of that test
    (select_lowering and the TVM backend both ask it)."""
    if node.op is not Op.CONV2D or node.type.dtype != "f32":
        return None
    if node.inputs[1] not in graph.constant_map and scaled_weight(graph, node.inputs[1]) is None:
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2] not in graph.constant_map:
        return None
    a = node.attrs
    return ConvSpec.of(graph.types[node.inputs[0]].shape, graph.types[node.inputs[1]].shape,
                       a.stride, a.padding, a.dilation, a.groups)


def scaled_weight(graph: Graph, name: str) -> tuple[str, str] | None:
    """(the constant weight W, the per-input-channel scale s) when value ``name`` is W * s: a mul of a constant
    [O, C, KH, KW] and a one-pixel [1, C, 1, 1] value, which passes/fold_channel_scale.py writes as a conv's
    weight (the backend scales the packed weight along ``Lowering.weight_channel_axis``); else None."""
    node = graph.node_map.get(name)
    if node is None or node.op is not Op.MUL or node.attrs.scalar is not None or len(node.inputs) != 2:
        return None
    weight, scale = node.inputs
    if weight not in graph.constant_map:
        weight, scale = scale, weight
    if weight not in graph.constant_map or scale in graph.constant_map:
        return None
    w_shape, s_shape = graph.types[weight].shape, graph.types[scale].shape
    if len(w_shape) != 4 or tuple(s_shape) != (1, w_shape[1], 1, 1):
        return None
    return weight, scale


def pads_by_groups(spec: ConvSpec, block: int | None) -> bool:
    """A grouped conv padded to whole channel blocks by whole groups of zeros: its groups have as many
    outputs as inputs, as many channels in as out, and a width that divides the block (depthwise, 8-channel
    groups in blocks of 16), so every block holds whole groups on both sides."""
    return (bool(block) and spec.in_channels == spec.out_channels and spec.in_per_group == spec.out_per_group
            and block % spec.out_per_group == 0)


def pad_to_blocks(spec: ConvSpec, weight: np.ndarray, bias: np.ndarray | None, in_block: int | None,
                  out_block: int | None) -> tuple[ConvSpec, np.ndarray, np.ndarray | None]:
    """The conv a kernel computes when its input or output is stored in padded channel blocks (ir/layout.py:
    C not a multiple of b, the pad lanes zero): the same conv over whole blocks, its extra channels zero.

    A padded output adds output channels of zero weight and bias, whose activation of 0 is 0 (block_layout
    pads only such outputs), so the pad lanes it writes stay zero. A padded input of one group is read as its
    C real channels (``nchw(data, spec.in_channels)``), not padded: zero weights would only add FLOPs. A
    grouped conv whose groups divide the block (``pads_by_groups``: depthwise, 8-channel groups in blocks of 16)
    pads both sides alike with whole groups of zero weights (its kernel runs whole channel blocks anyway);
    other grouped convs are refused: padding would move channels between groups."""
    def padded(c, block):
        return -(-c // block) * block if block else c

    c, o = padded(spec.in_channels, in_block), padded(spec.out_channels, out_block)
    if spec.groups == 1:
        c = spec.in_channels
    if (c, o) == (spec.in_channels, spec.out_channels):
        return spec, weight, bias
    if spec.groups > 1:
        if not (c == o and pads_by_groups(spec, out_block)):
            raise ValueError(f"{spec.describe()}: only groups as wide on both sides, whose width divides the "
                             f"block, take padded channel blocks, both sides alike ({in_block}, {out_block})")
        weight = np.concatenate([weight, np.zeros((o - spec.out_channels, *weight.shape[1:]), weight.dtype)])
        groups = o // spec.out_per_group
    else:
        weight = np.pad(weight, ((0, o - spec.out_channels), (0, c - spec.in_channels), (0, 0), (0, 0)))
        groups = 1
    if bias is not None:
        bias = np.concatenate([bias, np.zeros(o - spec.out_channels, bias.dtype)])
    return replace(spec, in_channels=c, out_channels=o, groups=groups), weight, bias


def pad_input(data: te.Tensor, spec: ConvSpec, name: str, extra: tuple[int, int] = (0, 0)) -> te.Tensor:
    """Zero-padded NCHW input ([N, C, H + 2ph + extra_h, W + 2pw + extra_w]); ``data`` itself when no padding.

    ``extra`` adds zeros at the bottom/right (tiled lowerings read whole tiles past the edge)."""
    ph, pw = spec.padding
    eh, ew = extra
    if not (ph or pw or eh or ew):
        return data
    n, c, h, w = (int(v) for v in data.shape)

    def value(b, ch, y, x):
        inside = tirx.all(y >= ph, y < ph + h, x >= pw, x < pw + w)
        return tirx.if_then_else(inside, data[b, ch, y - ph, x - pw], tirx.const(0.0, data.dtype))

    return te.compute((n, c, h + 2 * ph + eh, w + 2 * pw + ew), value, name=name)


class BlockedView:
    """A blocked tensor [N, ceil(C/b), H, W, b] read as NCHW: ``view[n, c, y, x]`` is ``t[n, c // b, y, x, c % b]``;
    its shape has ``channels`` (default: every stored one, a padded block's pad lanes included)."""

    def __init__(self, tensor: te.Tensor, channels: int | None = None):
        self.tensor = tensor
        n, cb, h, w, self.block = (int(v) for v in tensor.shape)
        self.shape = (n, channels or cb * self.block, h, w)
        self.dtype = tensor.dtype

    def __getitem__(self, index):
        n, c, y, x = index
        return self.tensor[n, c // self.block, y, x, c % self.block]


def nchw(data: te.Tensor, channels: int | None = None):
    """``data`` (4-D NCHW, or 5-D blocked: its first ``channels``) indexed as NCHW."""
    return BlockedView(data, channels) if len(data.shape) == 5 else data


def blocked_shape(shape: tuple[int, int, int, int], block: int) -> tuple[int, int, int, int, int]:
    n, c, h, w = shape
    if c % block:
        raise ValueError(f"{c} channels don't make blocks of {block}")
    return (n, c // block, h, w, block)


def epilogue(value, o, n, y, x, *, bias=None, residual=None, activation: str = "none"):
    """act(value + bias[o] + residual[n, o, y, x]): the ops a conv kernel absorbs (backends/conv_kernels.py);
    ``activation`` is a name of schedules/activations.py; ``residual`` is indexed as NCHW (see ``nchw``)."""
    if bias is not None:
        value = value + bias[o]
    if residual is not None:
        value = value + residual[n, o, y, x]
    return activate(value, activation)


def output_compute(output_shape: tuple[int, int, int, int], value_at, *, bias=None, residual=None, activation="none",
                   out_block: int | None = None, attrs: dict | None = None, name: str = OUTPUT_BLOCK) -> te.Tensor:
    """The output block of shape [N, O, OH, OW]: ``value_at(n, o, y, x)`` (the conv's sum) through the epilogue,
    stored NCHW or, with ``out_block`` = b, as [N, O/b, OH, OW, b] (then ``residual`` is blocked too)."""
    def value(n, o, y, x):
        return epilogue(value_at(n, o, y, x), o, n, y, x, bias=bias, residual=residual, activation=activation)

    if out_block is None:
        return te.compute(output_shape, value, name=name, attrs=attrs)
    residual = nchw(residual) if residual is not None else None
    return te.compute(blocked_shape(output_shape, out_block),
                      lambda n, cb, y, x, lane: value(n, cb * out_block + lane, y, x), name=name, attrs=attrs)


def loop_extent(sch: "tvm.s_tir.Schedule", loop) -> int:
    """The static extent of a loop of the schedule (every conv here has static shapes)."""
    return int(sch.get(loop).extent)


def sample(sch: "tvm.s_tir.Schedule", candidates: list[int], default: int):
    """A tunable choice: a MetaSchedule categorical sample over ``candidates`` (uniform) whose decision is
    ``default``, so the untuned schedule is the design space's default trace (tuning/tasks.py). Split a
    loop by it; never branch on it in Python (the search replays traces, it doesn't rerun the schedule)."""
    return sch.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates),
                                  decision=candidates.index(default))


def unrolled_channels(sch: "tvm.s_tir.Schedule", channels):
    """(outer, inner): a 1x1 conv's loop over input channels split by a tunable depth (tiling.reduction_unroll),
    the inner loop unrolled; order the inner one right inside the kernel taps (unit loops for a 1x1)."""
    extent = loop_extent(sch, channels)
    default = tiling.reduction_unroll(extent)
    outer, inner = sch.split(channels, [None, sample(sch, tiling.reduction_unrolls(extent, default), default)])
    sch.unroll(inner)
    return outer, inner


def columns_innermost(sch: "tvm.s_tir.Schedule", acc) -> None:
    """Store the accumulator tile of a kernel vectorized over output columns as [.., channel, column], so
    each vector over columns is contiguous. The computes write [n, block, y, x, lane] (the order that is
    contiguous when vectorized over the channel lane); with several channels per block, vectorizing over x
    made every accumulator vector a strided gather and scatter (ResNeXt's 4-channel groups: 10-20x slower)."""
    sch.transform_layout(acc, ("write", 0), lambda n, b, y, x, lane: (n, b, y, lane, x))


def chunked_passes(sch: "tvm.s_tir.Schedule", n, tiles, rows, passes, inner: list, cores: int):
    """Order a reduction run in passes (tiling.reduction_chunk): parallel(n, channel tiles[, row groups]) >
    passes > rows > ``inner``, with the row groups ``tiling.row_groups`` asks for so the cores get even
    shares. Returns the rows loop inside the passes (the one prefetch.annotate marks). With row groups a thread's
    next task is often the same tile's next group, whose first pass is still in L2, while the prefetch after a
    group's last pass fetches the next tile's (harmless; measured on 960->160 at 7x7, Intel AVX-512, 2 cores:
    56-59 -> 52-53 us warm, 69-72 -> 66-68 us with cold weights)."""
    groups = tiling.row_groups(loop_extent(sch, n) * loop_extent(sch, tiles), loop_extent(sch, rows), cores)
    if groups == 1:
        sch.reorder(n, tiles, passes, rows, *inner)
        sch.parallel(sch.fuse(n, tiles))
        return rows
    row_group, rows = sch.split(rows, [groups, None])
    sch.reorder(n, tiles, row_group, passes, rows, *inner)
    sch.parallel(sch.fuse(n, tiles, row_group))
    return rows


def optional_block(sch: "tvm.s_tir.Schedule", name: str, func_name: str | None):
    """The block ``name`` of the function, or None when this conv's compute has no such stage (e.g. no padding)."""
    try:
        return sch.get_sblock(name, func_name)
    except Exception:  # noqa: BLE001 - TVM raises a generic error for a missing block
        return None


def schedule_cuda_default(sch: "tvm.s_tir.Schedule", func_name: str | None, target, threads: int = 256) -> None:
    """Every block of the function gets its spatial loops fused and bound to (blockIdx.x, threadIdx.x);
    reductions run inside the thread. Correct for any lowering; tuning (MetaSchedule) makes it fast."""
    if func_name is not None:
        sch.work_on(func_name)
    for block in sch.get_child_blocks(sch.get_sblock("root", func_name)):
        spatial = [loop for loop, kind in zip(sch.get_loops(block), _iter_kinds(sch, block)) if kind == 0]
        if not spatial:
            continue
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        bx, tx = sch.split(fused, [None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def _iter_kinds(sch, block) -> list[int]:
    """0 for a data-parallel loop, 2 for a reduction one, per loop of ``block`` (one block var per loop)."""
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


@dataclass(frozen=True)
class Lowering:
    """One conv lowering: its name, whether it runs a conv, its workspace, weight transform, TE compute and
    schedules (the contract in the module docstring)."""

    name: str
    supports: Callable[[ConvSpec], "str | None"]
    workspace_bytes: Callable[[ConvSpec, int], int]
    prepare_weight: Callable[..., tuple]
    compute: Callable[..., te.Tensor]
    schedule_cpu: Callable[..., None]
    schedule_cuda: Callable[..., None] = schedule_cuda_default
    writes_blocked: bool = True  # compute takes out_block
    # Whether the kernel keeps its speed with blocked input and output (it vectorizes over channels): the
    # convs passes/block_layout.py lets exchange blocked tensors. Any lowering reads a blocked input
    # correctly (``nchw``), but one vectorized over pixels then gathers (measured 2-3x slower: im2col).
    blocked_io: Callable[[ConvSpec, int], bool] = lambda spec, lanes: False
    # The version of what its kernels become after the schedule (prefetch.py's TIR passes, run at build time):
    # bump it when that code changes and the schedule doesn't. A tuning record replays the schedule only, so
    # records tuned under the old code would still apply, measured against a default that no longer exists
    # (session 39: resnet18's Winograd records, tuned before the prefetch was spread, ran 6-7% slower in the
    # model than the new defaults). The version is the first instruction of the schedule's trace, so the
    # default's trace changes with it and the old records read as stale (tuning/apply.py): the default runs,
    # and `convopt tune` measures them again beside it. Version 0 writes nothing: the records made before
    # versions existed stay valid.
    codegen_version: int = 0
    # The axis of the packed weight (prepare_weight's one array) that runs over the input channels, when the
    # packing maps W[o, c, ...] into that axis's entry c alone (a re-layout, or a transform linear in each
    # (o, c) kernel such as Winograd's G g G^T): then a weight scaled per input channel is the packed weight
    # scaled along it, and the scaling can run at run time (passes/fold_channel_scale.py). None: no such axis.
    weight_channel_axis: int | None = None

    def prepared(self, weight: np.ndarray, spec: ConvSpec, lanes: int) -> tuple[np.ndarray, ...]:
        """The weight's constants as contiguous fp32 arrays."""
        return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in self.prepare_weight(weight, spec, lanes))

    def schedule(self, sch, func_name: str | None, target) -> None:
        """Schedule the PrimFunc ``func_name`` for ``target`` (a convopt Target) in place."""
        if self.codegen_version:
            sch.sample_categorical([self.codegen_version], [1.0], decision=0)  # one candidate: a mark, not a choice
        (self.schedule_cpu if target.is_cpu else self.schedule_cuda)(sch, func_name, target)


def packed_weight_buffer(sch, acc) -> str:
    """The name of the packed weight among the buffers the accumulation block ``acc`` reads: the one shaped like
    its loops (n, b, y, x, lane, rc, r1, r2) taken as [b, rc, r1, r2, lane] (direct's [OCB, I, KH, KW, ob],
    im2win's [OCB, I, KW, KH, ob])."""
    block = sch.get(acc)  # (not get_loops: a trace instruction, which would change the kernel's default trace)
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    if len(extents) == 9:  # the direct kernel's paired groups: the lane as (channel, group) (direct_conv2d)
        extents = [*extents[:4], extents[4] * extents[5], *extents[6:]]
    _, b, _, _, l, rc, ry, rx = extents
    extents = [b, rc, ry, rx, l]
    written = {w.source.name for w in block.writes}
    for read in block.reads:
        if read.source.name not in written and [int(d) for d in read.source.shape] == extents:
            return read.source.name
    raise ValueError(f"no packed weight of shape {extents} read by {block.name_hint}")
