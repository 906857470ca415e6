"""The driver for local rewrites: rules as data, applied in one forward sweep, repeated to a fixpoint.

A ``Rule`` names the ops it looks at and a function ``rewrite(node, ctx)`` that returns the name of
the value that replaces the node's result, or None when the pattern does not match. The function may
emit new nodes and constants through ``ctx`` first. Replaced nodes are dropped, and each sweep ends
with dead-code elimination, so rules always see exact use counts and a pass leaves no dead nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..ir.graph import Constant, Graph, GraphEditor, Node
from ..ir.ops import Attrs, Op
from ..ir.types import Type
from .eliminate_dead_code import eliminate_dead_code


class Context:
    """What a rule may ask about the graph while the driver rewrites it, and how it adds to it."""

    def __init__(self, graph: Graph, editor: GraphEditor):
        self.graph = graph  # the graph at the start of this sweep: use counts come from it
        self.editor = editor

    def producer(self, name: str | None) -> Node | None:
        """The node that defines ``name`` (None for inputs, constants and None)."""
        if name is None:
            return None
        return self.editor.defined.get(name) or self.graph.node_map.get(name)

    def constant(self, name: str | None) -> Constant | None:
        return self.editor.constants.get(name) if name is not None else None

    def num_uses(self, name: str) -> int:
        return self.graph.num_uses(name)

    def type(self, name: str) -> Type:
        node = self.editor.defined.get(name)
        return node.type if node is not None else self.graph.types[name]

    def emit(self, op: Op, inputs: Iterable[str | None], attrs: Attrs, type: Type, *, base: str,
             sources: Iterable[Node]) -> str:
        return self.editor.emit(op, inputs, attrs, type, base=base, sources=sources)

    def add_constant(self, base: str, tensor: torch.Tensor, is_parameter: bool = False) -> str:
        return self.editor.add_constant(base, tensor, is_parameter)


@dataclass(frozen=True)
class Rule:
    name: str
    ops: frozenset[Op]
    rewrite: Callable[[Node, Context], str | None]


def apply_rules(graph: Graph, rules: Iterable[Rule], pass_name: str, *, max_sweeps: int = 32) -> Graph:
    """Rewrite ``graph`` with ``rules`` until no rule fires (at most ``max_sweeps`` sweeps)."""
    by_op: dict[Op, list[Rule]] = {}
    for rule in rules:
        for op in rule.ops:
            by_op.setdefault(op, []).append(rule)
    for _ in range(max_sweeps):
        editor = GraphEditor(graph, pass_name)
        ctx = Context(graph, editor)
        changed = False
        for node in graph.nodes:
            current = Node(node.name, node.op, tuple(editor.resolve(i) for i in node.inputs), node.attrs,
                           node.type, node.scope, node.origin)
            for rule in by_op.get(node.op, ()):
                replacement = rule.rewrite(current, ctx)
                if replacement is not None:
                    editor.replace_uses(node.name, replacement)
                    changed = True
                    break
            else:
                editor.keep(node)
        if not changed:
            return graph
        graph = eliminate_dead_code(editor.finish())
    raise RuntimeError(f"{pass_name}: rules did not reach a fixpoint in {max_sweeps} sweeps")
