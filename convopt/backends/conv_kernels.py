"""convopt's own conv kernels in the Relax module: which convs use them, their fused epilogues, and
the schedules applied after the module is built.

A conv node with a constant weight is emitted as a call to its lowering's TE compute (the node's
``lowering`` attr, set by the select_lowering pass; ``direct`` when unset; see schedules/lowerings.py),
with the weight transformed once here, instead of Relax's generic conv2d. Its epilogue absorbs, when
each value on the way has a single reader:

    conv -> relu | clamp(0, 6)                      activation
    conv -> add(., r) [-> relu | clamp(0, 6)]      residual r (defined before the conv), then activation

The absorbed nodes are not emitted: their values are the kernel's output. Each kernel's PrimFunc is
scheduled by its lowering and marked opaque so Relax's FuseOps leaves it (and its schedule) alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ir.graph import Graph, Node
from ..ir.ops import Op
from ..schedules.conv_spec import ConvSpec
from ..schedules.lowerings import lowering

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


def emit_conv(bb: relax.BlockBuilder, graph: Graph, n: Node, env: dict, plan: Epilogue, lanes: int,
              kernels: dict[str, str]):
    """Emit conv ``n`` with its lowering; ``kernels`` collects PrimFunc name -> lowering for scheduling."""
    a = n.attrs
    weight = graph.constant_map[n.inputs[1]].data.detach().cpu().numpy().astype(np.float32)
    spec = ConvSpec.of(graph.types[n.inputs[0]].shape, weight.shape, a.stride, a.padding, a.dilation, a.groups)
    low = lowering(a.lowering or "direct")
    reason = low.supports(spec)
    if reason is not None:
        raise ValueError(f"node %{n.name}: lowering {low.name} can't run {spec.describe()}: {reason}")
    prepared = [relax.const(arr) for arr in low.prepare_weight(weight, spec, lanes)]
    bias = None
    if len(n.inputs) > 2 and n.inputs[2] is not None:
        bias = relax.const(graph.constant_map[n.inputs[2]].data.detach().cpu().numpy().astype(np.float32))
    residual = env[plan.residual] if plan.residual is not None else None
    compute = functools.partial(low.compute, spec=spec, activation=plan.activation, lanes=lanes)  # emit_te takes no ConvSpec
    out = bb.emit_te(compute, env[n.inputs[0]], *prepared, bias=bias, residual=residual,
                     primfunc_name_hint=f"convopt_{low.name}_{n.name}")
    call = bb.lookup_binding(out)
    kernels.setdefault(call.args[0].name_hint, low.name)  # emit_te shares one PrimFunc between equal convs
    return out


def schedule_kernels(mod: tvm.IRModule, target: tvm.target.Target, kernels: dict[str, str]) -> tvm.IRModule:
    """Schedule each conv kernel's PrimFunc with its lowering's schedule; mark it opaque and scheduled."""
    if not kernels:
        return mod
    sch = tvm.s_tir.Schedule(mod)
    for name, low in kernels.items():
        lowering(low).schedule(sch, name, target)
    mod = sch.mod
    for name in kernels:
        gv = mod.get_global_var(name)
        mod[gv] = mod[gv].with_attr("op_pattern", _OPAQUE).with_attr("tirx.is_scheduled", True)
    return mod
