"""The IR dump: a deterministic text form of a Graph, read back by ``convopt.ir.parse``.

    graph main(%x: f32[1,3,224,224]) {
      param %conv1.weight: f32[64,3,7,7] #5f1d0c2a
      const %bn1.running_mean: f32[64] #0b7e44d1
      %conv2d = conv2d(%x, %conv1.weight, none) {stride=(2, 2), padding=(3, 3), dilation=(1, 1), groups=1} : f32[1,64,112,112] @conv1
      %relu = relu(%conv2d) : f32[1,64,112,112] @act1 <- canonicalize(%relu_orig)
      return %relu
    }

A fused block (op fused_block) is followed by its body, one ``| `` line per node it runs.
Constants show name, type and a checksum of their contents, never their values. ``@scope`` is the
nn.Module the node came from; ``<- pass(%a, %b)`` says which pass made the node from which nodes.
"""

from __future__ import annotations

from typing import Mapping

from .graph import Graph, Node
from .literals import format_attrs
from .ops import Op, attr_items


def format_node(n: Node) -> str:
    args = ", ".join("none" if i is None else f"%{i}" for i in n.inputs)
    items = [(k, v) for k, v in attr_items(n.attrs) if not (n.op is Op.FUSED_BLOCK and k == "body")]
    text = f"%{n.name} = {n.op.value}({args})"
    if items:
        text += f" {{{format_attrs(items)}}}"
    text += f" : {n.type}"
    if n.scope:
        text += f" @{n.scope}"
    if n.origin is not None:
        sources = ", ".join(f"%{s}" for s in n.origin.sources)
        text += f" <- {n.origin.pass_name}({sources})"
    return text


def print_graph(g: Graph, notes: Mapping[str, str] | None = None) -> str:
    """The dump of ``g``; ``notes`` (node name -> text) adds a ``# text`` line above those nodes (the parser
    skips comment lines)."""
    params = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    lines = [f"graph {g.name}({params}) {{"]
    for c in g.constants:
        kind = "param" if c.is_parameter else "const"
        lines.append(f"  {kind} %{c.name}: {c.type} #{c.checksum}")
    for n in g.nodes:
        if notes and n.name in notes:
            lines.append(f"  # {notes[n.name]}")
        lines.append(f"  {format_node(n)}")
        if n.op is Op.FUSED_BLOCK:  # its body, indented under it
            lines += [f"    | {format_node(inner)}" for inner in n.attrs.body]
    lines.append("  return " + ", ".join(f"%{o}" for o in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
