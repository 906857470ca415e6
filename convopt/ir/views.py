"""Graph views for algorithms and pictures: a networkx DiGraph and Graphviz DOT text."""

from __future__ import annotations

import networkx as nx

from .graph import Graph, op_label
from .ops import Op
from .printer import format_node


def to_networkx(g: Graph, *, with_constants: bool = False) -> nx.DiGraph:
    """Nodes are value names (inputs, nodes, optionally constants); an edge means 'is read by'.

    Node data: ``kind`` ("input", "constant", "node") and, for IR nodes, ``node`` (the Node).
    """
    d = nx.DiGraph(name=g.name)
    for v in g.inputs:
        d.add_node(v.name, kind="input", type=v.type)
    if with_constants:
        for c in g.constants:
            d.add_node(c.name, kind="constant", type=c.type)
    for n in g.nodes:
        d.add_node(n.name, kind="node", node=n, type=n.type)
        for i in n.tensor_inputs:
            if i in d:
                d.add_edge(i, n.name)
    for o in g.outputs:
        d.nodes[o]["output"] = True
    return d


def _label(text: str) -> str:
    """A DOT string body: backslashes and quotes escaped, newlines as DOT's \\n line breaks."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(g: Graph) -> str:
    """Graphviz DOT text (render with ``dot -Tsvg``); constants are folded into their readers' labels."""
    lines = [f'digraph "{_label(g.name)}" {{', "  node [shape=box, fontname=monospace, fontsize=10];"]
    for v in g.inputs:
        label = _label(f"{v.name}\n{v.type}")
        lines.append(f'  "{_label(v.name)}" [shape=oval, label="{label}"];')
    constants = g.constant_map
    for n in g.nodes:
        weights = [i for i in n.tensor_inputs if i in constants]
        label = op_label(n)
        text = "\n".join([f"{n.name} = {label}", str(n.type), *(f"{w}: {constants[w].type}" for w in weights)])
        color = ', style=filled, fillcolor="#ffe0e0"' if n.op is Op.TORCH else ""
        lines.append(f'  "{_label(n.name)}" [label="{_label(text)}", tooltip="{_label(format_node(n))}"{color}];')
        for i in n.tensor_inputs:
            if i not in constants:
                lines.append(f'  "{_label(i)}" -> "{_label(n.name)}";')
    for o in g.outputs:
        lines.append(f'  "out:{_label(o)}" [shape=oval, label="output"];')
        lines.append(f'  "{_label(o)}" -> "out:{_label(o)}";')
    lines.append("}")
    return "\n".join(lines) + "\n"

