"""convopt's own kernels in the Relax module (convs, and dense layers: schedules/dense.py; fused blocks, on a
CPU and on CUDA): which nodes use them, the convs' fused epilogues, and the schedules applied after the
module is built.

A conv node with a constant weight is emitted as a call to its lowering's TE compute (the node's
``lowering`` attr, set by the select_lowering pass; ``direct`` when unset; see schedules/lowerings.py),
with the weight transformed once here, instead of Relax's generic conv2d. Its epilogue absorbs, when
each value on the way has a single reader:

    conv -> act                                     activation
    conv -> add(., r) [-> act]                      residual r (defined before the conv), then activation

where act is any op of ``activations.ACTIVATION_OPS`` (relu, relu6, sigmoid, SiLU, GELU both ways, hardswish,
hardsigmoid, and the opaque ``aten.leaky_relu``) on float32.

A linear node's dense kernel also absorbs what computes its input (``plan_prologues``), when each value on the
way has a single reader:

    adaptive_avg_pool2d(x, 1x1) or mean(x, (2, 3)) [-> channel_norm] -> reshape [N, K] -> linear
    layer_norm over K -> linear

with x channel-blocked: a classifier head's pool and norm (schedules/dense.py ``Prologue``).

The absorbed nodes are not emitted: their values are the kernel's output (an epilogue's) or never exist (a
prologue's). Each kernel's PrimFunc is
scheduled by its lowering and marked opaque so Relax's FuseOps leaves it (and its schedule) alone; its
attrs name the lowering (``convopt.lowering``), the IR nodes it computes (``convopt.nodes``) and the conv's
direct FLOPs (``convopt.flops``), which ``convopt report`` shows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from ..ir.graph import Graph, Node
from ..ir.ops import Op
from ..schedules import dense
from ..schedules.fused_space import Space
from ..ir.layout import block_of, padded_channels, stored_shape
from ..schedules.activations import activation_of
from ..schedules.conv_spec import conv_spec_of, nchw, pad_to_blocks, scaled_weight
from ..schedules.lowerings import lowering
from ..target import Target

_OPAQUE = 8  # TVM's kOpaque op pattern: never fused with neighbours


@dataclass(frozen=True)
class Epilogue:
    activation: str = "none"
    residual: str | None = None
    absorbed: tuple[str, ...] = ()  # node names whose values are the kernel's output


def plan_epilogues(graph: Graph) -> dict[str, Epilogue]:
    """For each conv and linear node that gets convopt's kernel: what its epilogue absorbs (a linear: only its
    activation)."""
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    position.update({name: -1 for name in graph.constant_map})
    position.update({v.name: -1 for v in graph.inputs})
    plans: dict[str, Epilogue] = {}

    def only_reader(name: str) -> Node | None:
        readers = graph.users.get(name, ())
        return readers[0] if graph.num_uses(name) == 1 and len(readers) == 1 else None

    for n in graph.nodes:
        is_conv = conv_spec_of(graph, n) is not None
        if not is_conv and dense_weight(graph, n) is None:
            continue
        absorbed, residual, activation = [], None, "none"
        reader = only_reader(n.name)
        if is_conv and reader is not None and reader.op is Op.ADD and reader.attrs.scalar is None and reader.type == n.type:
            other = reader.inputs[1] if reader.inputs[0] == n.name else reader.inputs[0]
            if position[other] < position[n.name] and graph.types[other] == n.type:
                residual = other
                absorbed.append(reader.name)
                reader = only_reader(reader.name)
        if reader is not None and activation_of(reader) is not None and reader.type == n.type:
            activation = activation_of(reader)
            absorbed.append(reader.name)
        plans[n.name] = Epilogue(activation, residual, tuple(absorbed))
    return plans


@dataclass(frozen=True)
class Prologue:
    """What a linear node's dense kernel computes from the value it reads (``source``) before the product."""

    source: str
    pool: bool
    norm: str | None  # the layer_norm or channel_norm node absorbed
    absorbed: tuple[str, ...]  # the pool, norm and reshape nodes: never emitted


def plan_prologues(graph: Graph) -> dict[str, Prologue]:
    """For each linear node that gets the dense kernel: the classifier head before it the kernel computes (a
    global average pool of a channel-blocked map, a norm over the pooled features), where there is one."""
    plans: dict[str, Prologue] = {}

    def only_product(name: str, op: Op) -> Node | None:  # the node making ``name``, if ``op`` and read only once
        node = graph.node_map.get(name)
        return node if node is not None and node.op is op and graph.num_uses(name) == 1 else None

    for n in graph.nodes:
        if dense_weight(graph, n) is None or graph.types[n.inputs[0]].rank != 2:
            continue
        features = graph.types[n.inputs[0]].shape[1]
        absorbed, norm, source = [], None, n.inputs[0]
        layer_norm = only_product(source, Op.LAYER_NORM)
        if layer_norm is not None and layer_norm.attrs.normalized_shape == (features,) and _constant_inputs(
                graph, layer_norm) and not layer_norm.type.layout:
            absorbed.append(layer_norm.name)
            norm, source = layer_norm.name, layer_norm.inputs[0]
        pool = _pooled_features(graph, source, only_product)
        if pool is not None:
            pool_nodes, pool_norm, pooled = pool
            if pool_norm is not None and norm is not None:
                pool = None  # two norms: the kernel takes one
            else:
                absorbed += pool_nodes
                norm, source = norm or pool_norm, pooled
        if pool is None and not absorbed:
            continue
        if pool is None and graph.types[source].rank != 2:
            continue  # a norm alone, of a row the kernel reads as it is stored
        plans[n.name] = Prologue(source, pool is not None, norm, tuple(absorbed))
    return plans


def _constant_inputs(graph: Graph, n: Node) -> bool:
    return all(i is None or i in graph.constant_map for i in n.inputs[1:])


def _pooled_features(graph: Graph, value: str, only_product) -> tuple[list[str], str | None, str] | None:
    """(absorbed nodes, the channel_norm among them or None, the pooled channel-blocked map) when ``value`` [N, K]
    is a global average pool of a blocked map (through a reshape of [N, K, 1, 1], and a channel_norm of it)."""
    from ..passes.block_layout import is_spatial_mean

    nodes: list[str] = []
    norm = None
    reshape = only_product(value, Op.RESHAPE)
    if reshape is not None and graph.types[reshape.inputs[0]].shape == (*graph.types[value].shape, 1, 1):
        nodes.append(reshape.name)
        value = reshape.inputs[0]
        channel_norm = only_product(value, Op.CHANNEL_NORM)
        if channel_norm is not None and _constant_inputs(graph, channel_norm):
            nodes.append(channel_norm.name)
            norm, value = channel_norm.name, channel_norm.inputs[0]
    pool = graph.node_map.get(value)
    if pool is None or graph.num_uses(value) != 1:
        return None
    pools = (pool.op is Op.ADAPTIVE_AVG_POOL2D and tuple(pool.attrs.output_size) == (1, 1)) or (
        is_spatial_mean(graph, pool) and (pool.attrs.keepdim == bool(nodes)))
    pooled = graph.types[pool.inputs[0]]
    if not pools or not block_of(pooled.layout) or 4 * int(np.prod(stored_shape(pooled.shape, pooled.layout))) > \
            dense.MAX_POOLED_BYTES:
        return None
    return [*nodes, pool.name], norm, pool.inputs[0]


@dataclass
class KernelUse:
    """One PrimFunc of convopt's: its kind (a conv's lowering, or "dense"), its schedule, the FLOPs of one
    call (a conv's direct FLOPs) and the IR nodes that call it."""

    kind: str
    schedule: Callable  # (sch, func name, target) -> None: the default schedule, and the design space
    flops: int
    nodes: list[str]
    # a kernel written out rather than scheduled (the CPU fused blocks): its generator's space
    # (schedules/fused_space.py), which builds the kernel its schedule's sampled decisions name; None: the
    # scheduled workload is the kernel
    space: Space | None = None


def dense_weight(graph: Graph, n: Node) -> np.ndarray | None:
    """The [N, K] fp32 weight of a linear node convopt runs with its dense kernel (a constant weight), else None."""
    if n.op is not Op.LINEAR or n.type.dtype != "f32" or n.inputs[1] not in graph.constant_map:
        return None
    if len(n.inputs) > 2 and n.inputs[2] is not None and n.inputs[2] not in graph.constant_map:
        return None
    return graph.constant_map[n.inputs[1]].data.detach().cpu().numpy().astype(np.float32)


def emit_dense(bb: relax.BlockBuilder, graph: Graph, n: Node, x: relax.Expr, plan: Epilogue, lanes: int,
               kernels: dict[str, KernelUse], prologue: Prologue | None = None):
    """Emit linear ``n`` (y = x W^T + b over the last axis) as the dense kernel on x viewed as [M, K]; with a
    ``prologue``, x is the prologue's source (its pooled map as stored, or the normalized row)."""
    weight = dense_weight(graph, n)
    out_features, k = weight.shape
    x_shape = graph.types[n.inputs[0]].shape
    rows = int(np.prod(x_shape[:-1], dtype=np.int64))
    bias = _constant(graph, n.inputs[2] if len(n.inputs) > 2 else None)
    flops = 2 * rows * k * out_features
    pools = prologue is not None and prologue.pool
    if pools:  # x is the blocked map itself
        flops += int(np.prod(graph.types[prologue.source].shape))  # the pool's additions
    else:
        x = bb.emit(relax.op.reshape(x, (rows, k)))
    norm = graph.node_map[prologue.norm] if prologue is not None and prologue.norm is not None else None
    if norm is not None:
        weight, bias = dense.fold_norm(weight, bias, *(_constant(graph, i) for i in norm.inputs[1:]))
    kernel_prologue = None if prologue is None else dense.Prologue(pools, None if norm is None else norm.attrs.eps)
    bias = None if bias is None else relax.const(bias.astype(np.float32))
    out = bb.emit_te(functools.partial(dense.compute, out_features=out_features, activation=plan.activation,
                                       prologue=kernel_prologue), x,
                     relax.const(dense.pack_weight(weight, lanes)), bias, primfunc_name_hint=f"convopt_dense_{n.name}")
    name = bb.lookup_binding(out).args[0].name_hint
    # (one node a call, as a conv's absorbed epilogue nodes: tuning weighs a kernel by its nodes)
    kernels.setdefault(name, KernelUse("dense", dense.schedule_cpu, flops, [])).nodes.append(n.name)
    return bb.emit(relax.op.reshape(out, n.type.shape))


def emit_conv(bb: relax.BlockBuilder, graph: Graph, n: Node, env: dict, plan: Epilogue, lanes: int,
              kernels: dict[str, KernelUse]):
    """Emit conv ``n`` with its lowering; ``kernels`` collects what each PrimFunc computes, for scheduling. A
    weight scaled per input channel at run time (``scaled_weight``) is packed once and scaled in its packed
    layout before each call."""
    scaled = scaled_weight(graph, n.inputs[1])
    logical, spec, low, arrays, bias = packed_conv(graph, n, lanes)
    out_block = block_of(n.type.layout)
    if scaled and gated_weight_reader(graph, scaled[1]) == n.name:  # the squeeze-excite's kernel scaled it
        prepared = [env[scaled[1]]]
    elif scaled:
        gate = graph.types[scaled[1]]
        stored = padded_channels(spec.in_channels, block_of(gate.layout) or 1)  # one pixel: C, or whole blocks
        prepared = [_scale_along(bb, arrays[0], env[scaled[1]], stored, low.weight_channel_axis, spec.in_channels)]
    else:
        prepared = [relax.const(arr) for arr in arrays]
    bias = relax.const(bias) if bias is not None else None
    residual = env[plan.residual] if plan.residual is not None else None
    blocked = {"out_block": out_block} if out_block else {}

    def compute(data, *prepared, bias=None, residual=None):  # data: NCHW or blocked, per the graph's layout
        return low.compute(nchw(data, spec.in_channels), *prepared, bias=bias, residual=residual, spec=spec,
                           activation=plan.activation, lanes=lanes, **blocked)

    out = bb.emit_te(compute, env[n.inputs[0]], *prepared, bias=bias, residual=residual,
                     primfunc_name_hint=f"convopt_{low.name}_{n.name}")
    call = bb.lookup_binding(out)
    # emit_te shares one PrimFunc between equal convs
    # the conv's own FLOPs, not its padded channels' (a report's GFLOP/s and roofline count useful work)
    kernels.setdefault(call.args[0].name_hint, KernelUse(low.name, low.schedule, 2 * logical.macs, [])).nodes.append(
        n.name)
    return out


def packed_conv(graph: Graph, n: Node, lanes: int):
    """(the conv's logical spec, the spec it runs, its lowering, its prepared arrays, its bias or None) for conv
    ``n``: a side stored in padded channel blocks makes the kernel compute the conv over whole blocks (pad lanes
    zero). A weight scaled at run time (``scaled_weight``) is prepared unscaled, and must be one array with an
    input-channel axis."""
    scaled = scaled_weight(graph, n.inputs[1])
    weight = _constant(graph, scaled[0] if scaled else n.inputs[1]).astype(np.float32)
    bias = _constant(graph, n.inputs[2] if len(n.inputs) > 2 else None)
    bias = None if bias is None else bias.astype(np.float32)
    logical = conv_spec_of(graph, n)
    spec, weight, bias = pad_to_blocks(logical, weight, bias, block_of(graph.types[n.inputs[0]].layout),
                                       block_of(n.type.layout))
    low = lowering(n.attrs.lowering or "direct")
    reason = low.supports(spec)
    if reason is not None:
        raise ValueError(f"node %{n.name}: lowering {low.name} can't run {spec.describe()}: {reason}")
    arrays = low.prepared(weight, spec, lanes)
    if scaled and (low.weight_channel_axis is None or len(arrays) != 1):
        raise ValueError(f"node %{n.name}: lowering {low.name} can't scale its packed weight per input channel")
    return logical, spec, low, arrays, bias


def gated_weight_reader(graph: Graph, gate: str) -> str | None:
    """The conv whose packed weight the squeeze-excite block ``gate`` (ending in its gate: fold_channel_scale
    moved the gate into that conv's weight) scales in its own kernel, or None. The gate must be read by that
    weight's multiply alone, and the multiply by the conv alone."""
    from ..schedules import squeeze_excite

    node = graph.node_map.get(gate)
    if node is None or node.op is not Op.FUSED_BLOCK or node.attrs.kind != squeeze_excite.KIND:
        return None
    readers = graph.users.get(gate, ())
    if len(readers) != 1 or gate in graph.outputs:
        return None
    mul = readers[0]
    convs = graph.users.get(mul.name, ())
    scaled = scaled_weight(graph, mul.name)
    if (scaled is None or scaled[1] != gate or len(convs) != 1 or mul.name in graph.outputs
            or convs[0].op is not Op.CONV2D or convs[0].inputs[1] != mul.name):
        return None
    return convs[0].name


def _scale_along(bb: relax.BlockBuilder, packed: np.ndarray, scale: relax.Expr, stored: int, axis: int,
                 channels: int):
    """``packed`` times ``scale``'s first ``channels`` values along ``axis`` (channels beyond them, a lowering's
    padding, times 0). ``scale`` is one pixel of ``stored`` values, [1, C, 1, 1] or in channel blocks
    [1, C/b, 1, 1, b]: the same values in the same order either way."""
    shape = list(packed.shape)
    flat = bb.emit(relax.op.reshape(scale, (stored,)))
    if stored != channels:
        flat = bb.emit(relax.op.strided_slice(flat, axes=[0], begin=[0], end=[channels]))
    if shape[axis] != channels:
        flat = bb.emit(relax.op.concat([flat, relax.const(np.zeros(shape[axis] - channels, np.float32))]))
    broadcast = [1] * len(shape)
    broadcast[axis] = shape[axis]
    return bb.emit(relax.op.multiply(relax.const(packed), relax.op.reshape(flat, broadcast)))


def _blocks_of(graph: Graph, n: Node, names, lanes: int) -> list[bool]:
    """Whether each of the values ``names`` is stored in channel blocks (of ``lanes``: the only width the
    fused kernels take)."""
    blocks = [block_of(graph.types[name].layout) for name in names]
    for name, b in zip(names, blocks):
        if b not in (None, lanes):
            raise ValueError(f"{n.name}: the fused kernel takes blocks of {lanes} channels, not {b} ({name})")
    return [bool(b) for b in blocks]


def _constant(graph: Graph, name: str | None) -> np.ndarray | None:
    return None if name is None else graph.constant_map[name].data.detach().cpu().numpy()


def _block_arrays(graph: Graph, block) -> list:
    """The weight and bias (None: no bias) of each conv of a fused block, in order, as numpy arrays; in a
    ConvNeXt block the norm's scale and shift follow the depthwise conv's."""
    arrays = [_constant(graph, conv.inputs[i] if i < len(conv.inputs) else None) for conv in _block_convs(block)
              for i in (1, 2)]
    if getattr(block, "mixer", None) is not None:
        if block.norm:  # ConvNeXt: the depthwise conv, the norm's scale and shift, the MLP
            norm = next(b for b in block.nodes if b.op is Op.CHANNEL_NORM)
            return arrays[:2] + [_constant(graph, i) for i in norm.inputs[1:3]] + arrays[2:]
        return [*mixer_arrays(graph, block), None, None, *arrays[-4:]]  # InceptionNeXt: no norm
    return arrays


def mixer_arrays(graph: Graph, block) -> tuple[np.ndarray, np.ndarray]:
    """(weight [C, 1, k, k], bias [C]) of the one depthwise conv that computes InceptionNeXt's token mixer
    (passes/fuse_blocks.py ``_inception_mixer``): the cat's parts in order, each conv's kernel centred in the
    k x k one (its padding is "same", so the outputs agree), a part passed as it is the centre tap 1."""
    spec = block.mixer
    k, C = spec.kernel[0], spec.in_channels
    weight, bias = np.zeros((C, 1, k, k), np.float32), np.zeros(C, np.float32)
    cat = next(b for b in block.nodes if b.op is Op.CAT)
    nodes, offset = {b.name: b for b in block.nodes}, 0
    for name in cat.inputs:
        part = nodes[name]
        width = part.type.shape[1]
        if part.op is Op.CONV2D:
            w = _constant(graph, part.inputs[1])
            kh, kw = w.shape[2:]
            weight[offset:offset + width, :, (k - kh) // 2:(k + kh) // 2, (k - kw) // 2:(k + kw) // 2] = w
            b = _constant(graph, part.inputs[2] if len(part.inputs) > 2 else None)
            bias[offset:offset + width] = 0 if b is None else b
        else:
            weight[offset:offset + width, 0, k // 2, k // 2] = 1.0
        offset += width
    return weight, bias


def _block_convs(block) -> list[Node]:
    return [b for b in block.nodes if b.op is Op.CONV2D]


def _block_skip(block) -> str | None:
    """The value a pointwise MLP or a conv chain adds to its last conv (its add's operand from outside the
    block), or None."""
    if not block.residual:
        return None
    add = next(n for n in block.nodes if n.op is Op.ADD)
    inside = {n.name for n in block.nodes}
    return next(i for i in add.inputs if i not in inside)


def _call_fused(bb: relax.BlockBuilder, n: Node, block, func, args, out_shape, schedule,
                kernels: dict[str, KernelUse], space=None):
    """Emit the call of a fused block's kernel ``func`` (add_func shares it between equal blocks) and record
    its use (``schedule``, ``space``: KernelUse's)."""
    gvar = bb.add_func(func, f"convopt_fused_{n.name}")
    out = bb.emit(relax.call_tir(gvar, args, relax.TensorType(out_shape, "float32")))
    name = bb.lookup_binding(out).args[0].name_hint
    flops = 2 * getattr(block, "macs", sum(spec.macs for spec in block.convs))  # (a token mixer: its branches')
    kernels.setdefault(name, KernelUse("fused_" + block.kind, schedule, flops, [], space)).nodes.append(n.name)
    return out


def emit_fused_block(bb: relax.BlockBuilder, graph: Graph, n: Node, env: dict, lanes: int, cores: int,
                     kernels: dict[str, KernelUse]):
    """Emit fused block ``n`` (passes/fuse_blocks.py) on a CPU as one call of its fused kernel
    (schedules/fused_block.py, schedules/fused_mlp.py, schedules/fused_chain.py), written out as a PrimFunc."""
    from ..passes.match_blocks import describe
    from ..schedules import fused_block, fused_chain, fused_mlp, fused_space, squeeze_excite, token_mixer

    block = describe(graph, n)
    x = env[n.inputs[0]]
    if block.kind == token_mixer.KIND:  # no knobs: its space is its one kernel
        in_block, out_block = _blocks_of(graph, n, (n.inputs[0], n.name), lanes)
        prepared = [relax.const(arr) for arr in token_mixer.prepare_weights(block, *mixer_arrays(graph, block),
                                                                             lanes=lanes)]
        func = token_mixer.prim_func(block, lanes, token_mixer.default_bands(block, cores, lanes),
                                     in_block=in_block, out_block=out_block)
        space = fused_space.Space((), lambda tiles: func, lambda tiles: ())
        _, out_shape = token_mixer.io_shapes(block, lanes, in_block, out_block)
        return _call_fused(bb, n, block, func, [x, *prepared], out_shape, space.sample, kernels, space)
    arrays = _block_arrays(graph, block)
    if block.kind == squeeze_excite.KIND:  # no knobs: its space is its one kernel
        in_block, out_block = _blocks_of(graph, n, (n.inputs[0], n.name), lanes)
        prepared = [relax.const(arr) for arr in squeeze_excite.prepare_weights(block, *arrays, lanes=lanes)]
        reader, weight = gated_weight_reader(graph, n.name), squeeze_excite.PLACEHOLDER
        scaled = None
        if reader is not None:  # the value of ``n`` is then that conv's packed weight times the gate
            _, _, low, (weight,), _ = packed_conv(graph, graph.node_map[reader], lanes)
            scaled = squeeze_excite.ScaledWeight(weight.shape, low.weight_channel_axis)
        func = squeeze_excite.prim_func(block, lanes, squeeze_excite.default_bands(block, cores, lanes),
                                        in_block=in_block, out_block=out_block, scaled_weight=scaled)
        space = fused_space.Space((), lambda tiles: func, lambda tiles: ())
        _, out_shape = squeeze_excite.io_shapes(block, lanes, in_block, out_block, scaled)
        return _call_fused(bb, n, block, func, [x, *prepared, relax.const(weight)], out_shape, space.sample,
                           kernels, space)
    if block.kind in fused_chain.KINDS:
        skip = _block_skip(block)
        in_block, out_block, skip_block = _blocks_of(graph, n, (n.inputs[0], n.name, skip or n.name), lanes)
        prepared = [relax.const(arr) for arr in fused_chain.kernel_arguments(block, arrays, lanes)]
        module, knobs, extra = fused_chain, fused_chain.KNOBS, {"skip_block": skip_block}
        bands = fused_chain.default_bands(block, cores)
        skip_arg = env[skip] if skip is not None else relax.const(np.zeros(1, np.float32))
        args = [x, *prepared, skip_arg]
    elif block.kind in (fused_mlp.KIND, fused_mlp.MIXER_KIND):
        skip = _block_skip(block)
        in_block, out_block, skip_block = _blocks_of(graph, n, (n.inputs[0], n.name, skip or n.name), lanes)
        prepared = [relax.const(arr) for arr in fused_mlp.prepare_weights(block, *arrays, lanes=lanes)]
        module, knobs, extra = fused_mlp, tuple(fused_space.CANDIDATES), {"skip_block": skip_block}
        bands = fused_mlp.default_bands(block, cores)
        skip_arg = env[skip] if skip is not None else relax.const(np.zeros(1, np.float32))
        args = [x, *prepared, skip_arg]
    else:
        in_block, out_block = _blocks_of(graph, n, (n.inputs[0], n.name), lanes)
        prepared = [relax.const(arr) for arr in fused_block.prepare_weights(block, *arrays, lanes=lanes)]
        # its rule weighs splitting the channels across the cores instead of the rows (default_groups)
        module, knobs, extra = fused_block, tuple(fused_space.CANDIDATES), {
            "groups": fused_block.default_groups(block, cores, lanes)}
        bands = fused_block.default_bands(block, cores, lanes)
        args = [x, *prepared]
    _, out_shape = module.io_shapes(block, lanes, in_block, out_block)
    space = fused_space.Space(
        knobs,
        lambda tiles: module.prim_func(block, lanes, bands, in_block=in_block, out_block=out_block, tiles=tiles,
                                       **extra),
        lambda tiles: module.plan(block, lanes, bands, tiles))
    return _call_fused(bb, n, block, space.build(fused_space.DEFAULT), args, out_shape, space.sample, kernels, space)


def runs_fused_on_cuda(graph: Graph, n: Node) -> bool:
    """Whether schedules/fused_block_cuda.py's kernel runs fused block ``n`` (its kind and its sizes)."""
    from ..passes.match_blocks import describe
    from ..schedules import fused_block_cuda

    return fused_block_cuda.supports(describe(graph, n)) is None


def emit_fused_block_cuda(bb: relax.BlockBuilder, graph: Graph, n: Node, env: dict, kernels: dict[str, KernelUse]):
    """Emit fused block ``n`` on CUDA as one call of schedules/fused_block_cuda.py's kernel (a TE compute:
    scheduled, or tuned, like a conv kernel by ``schedule_kernels``)."""
    from ..passes.match_blocks import describe
    from ..schedules import fused_block_cuda

    block = describe(graph, n)
    prepared = fused_block_cuda.prepare_weights(block, *_block_arrays(graph, block))
    args = [env[n.inputs[0]], *map(relax.const, prepared)]
    skip = _block_skip(block) if block.kind not in (fused_block_cuda.KIND, fused_block_cuda.PARTIAL_KIND) else None
    if skip is not None:  # an MLP's, a ConvNeXt block's or a conv chain's skip is an argument (any value of
        # the output's shape)
        args.append(env[skip])
    return _call_fused(bb, n, block, fused_block_cuda.prim_func(block), args, fused_block_cuda.io_shapes(block)[1],
                       fused_block_cuda.schedule_cuda, kernels)


def workload(mod: tvm.IRModule, name: str) -> tvm.IRModule:
    """PrimFunc ``name`` of ``mod``, unscheduled, as the one-function module ("main") that tuning tasks and
    records are keyed by: equal convs of any model share it (weights are arguments, not part of it). It
    carries the global symbol "main" that a module compiled on its own needs (schedule_kernels removes it)."""
    return tvm.IRModule({"main": mod[name].with_attr("global_symbol", "main")})


def default_schedule(use: KernelUse, target: Target) -> Callable[[tvm.s_tir.Schedule], None]:
    """The kernel's hand-written schedule as a function of a Schedule over its workload (also its tuning
    design space: its tunable choices are samples whose decisions default to the heuristic)."""
    return lambda sch: use.schedule(sch, "main", target)


def schedule_kernels(mod: tvm.IRModule, target: Target, kernels: dict[str, KernelUse], records=None) -> tvm.IRModule:
    """Schedule each of convopt's PrimFuncs: with the best record of ``records`` (tuning/apply.py) for its
    workload, else its default schedule; mark it opaque and scheduled, and say which ran
    (``convopt.tuning``: "tuned", "default", "untuned" or "stale", with the measured microseconds); warn once
    per process about stale records (made against an older default schedule). Updates ``mod``."""
    stale = []
    for name, use in kernels.items():
        task = workload(mod, name)
        if records is not None:
            func, tuning = records.schedule(task, default_schedule(use, target), name, use.space)
        elif use.space is not None:  # written out: the workload is its default point
            func, tuning = task["main"], None
        else:
            sch = tvm.s_tir.Schedule(task)
            default_schedule(use, target)(sch)
            func, tuning = sch.mod["main"], None
        func = (func.without_attr("global_symbol").with_attr("op_pattern", _OPAQUE).with_attr("tirx.is_scheduled", True)
                .with_attr("convopt.lowering", use.kind).with_attr("convopt.nodes", ",".join(use.nodes))
                .with_attr("convopt.flops", str(use.flops)))
        if tuning is not None:
            func = func.with_attr("convopt.tuning", tuning.to_attr())
            if tuning.status == "stale":
                stale.append(name)
        mod[mod.get_global_var(name)] = func
    if stale:
        from ..tuning.apply import warn_stale

        warn_stale(stale)
    return mod
