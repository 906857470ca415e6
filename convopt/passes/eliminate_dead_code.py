"""Dead-code elimination: drop nodes and constants that no output depends on.

    node n with no reader and not an output  => removed (repeated backwards, so chains go at once)
    constant with no reader                  => removed

Graph inputs are kept even when unused: they are the callable's signature. Every IR op is pure, so
removing an unread node never changes a result. Runs after every pass that replaces nodes.
"""

from __future__ import annotations

from ..ir.graph import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if node.name in live:
            kept.append(node)
            live.update(node.tensor_inputs)
    nodes = tuple(reversed(kept))
    constants = tuple(c for c in graph.constants if c.name in live)
    if len(nodes) == len(graph.nodes) and len(constants) == len(graph.constants):
        return graph
    return graph.replace(nodes=nodes, constants=constants)
