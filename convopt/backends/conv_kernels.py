"""convopt's own conv kernels in the Relax module: which convs use them, their fused epilogues, and
the schedules applied after the module is built.

A conv node with a constant weight is emitted as a call to ``schedules.direct_conv2d`` (weights
packed once here) instead of Relax's generic conv2d. Its epilogue absorbs, when each value on the way
has a single reader:

    conv -> relu | clamp(0, 6)                      activation
    conv -> add(., r) [-> relu | clamp(0, 6)]      residual r (defined before the conv), then activation

The absorbed nodes are not emitted: their values are the kernel's output. Each kernel's PrimFunc is
marked opaque so Relax's FuseOps leaves it (and its schedule) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ir.graph import Graph, Node
from ..ir.ops import Op
from ..schedules import direct_conv2d as dc

_OPAQUE = 8  # TVM's kOpaque op pattern: never fused with neighbours


@dataclass(frozen=True)
class Epilogue:
    activation: str = "none"
    residual: str | None = None
    absorbed: tuple[str, ...] = ()  # node names whose values are the kernel's output


def _activation(node: Node) -> str | None:
    if node.op is Op.RELU:
        return "relu"
    if node.op is Op.CLAMP and node.attrs.min == 0.0 and node.attrs.max == 6.0:
        return "relu6"
    return None


def plan_epilogues(graph: Graph) -> dict[str, Epilogue]:
    """For each conv node that gets convopt's kernel: what its epilogue absorbs."""
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    position.update({name: -1 for name in graph.constant_map})
    position.update({v.name: -1 for v in graph.inputs})
    plans: dict[str, Epilogue] = {}

    def only_reader(name: str) -> Node | None:
        readers = graph.users.get(name, ())
        return readers[0] if graph.num_uses(name) == 1 and len(readers) == 1 else None

    for n in graph.nodes:
        if n.op is not Op.CONV2D or n.type.dtype != "f32" or n.inputs[1] not in graph.constant_map:
            continue
        if len(n.inputs) > 2 and n.inputs[2] is not None and n.inputs[2] not in graph.constant_map:
            continue
        absorbed, residual, activation = [], None, "none"
        reader = only_reader(n.name)
        if reader is not None and reader.op is Op.ADD and reader.attrs.scalar is None and reader.type == n.type:
            other = reader.inputs[1] if reader.inputs[0] == n.name else reader.inputs[0]
            if position[other] < position[n.name] and graph.types[other] == n.type:
                residual = other
                absorbed.append(reader.name)
                reader = only_reader(reader.name)
        if reader is not None and _activation(reader) is not None:
            activation = _activation(reader)
            absorbed.append(reader.name)
        plans[n.name] = Epilogue(activation, residual, tuple(absorbed))
    return plans


def emit_conv(bb: relax.BlockBuilder, graph: Graph, n: Node, env: dict, plan: Epilogue, lanes: int):
    a = n.attrs
    weight = graph.constant_map[n.inputs[1]].data.detach().cpu().numpy().astype(np.float32)
    out_channels = weight.shape[0]
    oc_block = dc.choose_oc_block(out_channels // a.groups, lanes)
    packed = relax.const(dc.pack_weight(weight, a.groups, oc_block))
    bias = None
    if len(n.inputs) > 2 and n.inputs[2] is not None:
        bias = relax.const(graph.constant_map[n.inputs[2]].data.detach().cpu().numpy().astype(np.float32))
    residual = env[plan.residual] if plan.residual is not None else None
    return bb.emit_te(dc.direct_conv2d_compute, env[n.inputs[0]], packed, bias, out_channels=out_channels,
                      kernel=tuple(weight.shape[2:]), stride=a.stride, padding=a.padding, dilation=a.dilation,
                      groups=a.groups, oc_block=oc_block, activation=plan.activation, residual=residual,
                      primfunc_name_hint=f"convopt_conv_{n.name}")


def schedule_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    names = dc.find_direct_conv2d_funcs(mod)
    if not names:
        return mod
    sch = tvm.s_tir.Schedule(mod)
    for name in names:
        dc.schedule_direct_conv2d(sch, name, target)
    mod = sch.mod
    for name in names:
        gv = mod.get_global_var(name)
        mod[gv] = mod[gv].with_attr("op_pattern", _OPAQUE).with_attr("tirx.is_scheduled", True)
    return mod
