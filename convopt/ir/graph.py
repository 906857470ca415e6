"""The convopt IR: a flat, topologically ordered list of nodes over named values.

A Graph has inputs (name and type), constants (weights; a name, a type, a checksum and the tensor),
nodes in topological order and the names of its outputs. Every value has a unique name. Graphs and
nodes are frozen: passes build new ones (``GraphEditor`` helps), they never mutate.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

import torch

from .ops import OPS, Attrs, Op
from .types import TensorType, Type


@dataclass(frozen=True)
class Origin:
    """Provenance: the pass that made a node and the nodes it was made from."""

    pass_name: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    inputs: tuple[str | None, ...]  # value names; None only in an op's optional positions
    attrs: Attrs
    type: Type
    scope: str = ""  # the nn.Module path the node was captured in, e.g. "layer1.0.conv1"
    origin: Origin | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        expected = OPS[self.op].attrs
        if type(self.attrs) is not expected:
            raise TypeError(f"node %{self.name}: {self.op.value} takes {expected.__name__}, "
                            f"got {type(self.attrs).__name__}")

    @property
    def tensor_inputs(self) -> tuple[str, ...]:
        return tuple(i for i in self.inputs if i is not None)


def op_label(node: Node) -> str:
    """What a node computes, for messages and counts: the ATen target of an opaque torch node, else the op."""
    return node.attrs.target if node.op is Op.TORCH else node.op.value


def checksum(tensor: torch.Tensor) -> str:
    """A short content hash of a tensor (dtype, shape and bytes), shown in dumps instead of values."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha1(f"{t.dtype}{tuple(tensor.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class Constant:
    """A weight or buffer. ``data`` is None in a graph parsed from text (it has only the checksum)."""

    name: str
    type: TensorType
    checksum: str
    is_parameter: bool = False  # a trainable nn.Parameter in the source model (vs. a buffer)
    data: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor, is_parameter: bool = False) -> Constant:
        tensor = tensor.detach()
        return cls(name, TensorType.of(tensor), checksum(tensor), is_parameter, tensor)


@dataclass(frozen=True)
class Value:
    """A graph input."""

    name: str
    type: TensorType


@dataclass(frozen=True)
class Graph:
    inputs: tuple[Value, ...]
    constants: tuple[Constant, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    name: str = "main"

    def __post_init__(self) -> None:
        for f in ("inputs", "constants", "nodes", "outputs"):
            object.__setattr__(self, f, tuple(getattr(self, f)))

    # ---- lookups (computed once per graph; graphs are immutable)
    @cached_property
    def constant_map(self) -> dict[str, Constant]:
        return {c.name: c for c in self.constants}

    @cached_property
    def node_map(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def types(self) -> dict[str, Type]:
        t: dict[str, Type] = {v.name: v.type for v in self.inputs}
        t.update((c.name, c.type) for c in self.constants)
        t.update((n.name, n.type) for n in self.nodes)
        return t

    @cached_property
    def users(self) -> dict[str, tuple[Node, ...]]:
        """For each value, the nodes that read it (a node reading it twice is listed twice)."""
        u: dict[str, list[Node]] = {name: [] for name in self.types}
        for n in self.nodes:
            for i in n.tensor_inputs:
                u.setdefault(i, []).append(n)
        return {k: tuple(v) for k, v in u.items()}

    def num_uses(self, name: str) -> int:
        """Readers of a value, counting the graph's outputs as readers."""
        return len(self.users.get(name, ())) + self.outputs.count(name)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            key = op_label(n)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def replace(self, **changes) -> Graph:
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken``; adds it to ``taken``."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


class GraphEditor:
    """Mutable scratch space for one pass run: start from a graph, emit and substitute, then ``finish``.

    Substitutions (``replace_uses``) apply to every node emitted afterwards and to the outputs, so a
    pass can walk the old nodes in order, re-emitting or replacing each one.
    """

    def __init__(self, graph: Graph, pass_name: str):
        self.graph = graph
        self.pass_name = pass_name
        self.constants: dict[str, Constant] = dict(graph.constant_map)
        self.nodes: list[Node] = []
        self.defined: dict[str, Node] = {}
        self.alias: dict[str, str] = {}
        self._taken = set(graph.types)

    def fresh_name(self, base: str) -> str:
        return unique_name(base, self._taken)

    def resolve(self, name: str | None) -> str | None:
        while name is not None and name in self.alias:
            name = self.alias[name]
        return name

    def replace_uses(self, old: str, new: str) -> None:
        self.alias[old] = new

    def add_constant(self, base: str, tensor: torch.Tensor, is_parameter: bool = False) -> str:
        name = self.fresh_name(base)
        self.constants[name] = Constant.of(name, tensor, is_parameter)
        return name

    def keep(self, node: Node) -> None:
        """Re-emit an existing node, with substitutions applied to its inputs."""
        inputs = tuple(self.resolve(i) for i in node.inputs)
        if inputs != node.inputs:
            node = dataclasses.replace(node, inputs=inputs)
        self.nodes.append(node)
        self.defined[node.name] = node

    def emit(self, op: Op, inputs: Iterable[str | None], attrs: Attrs, type: Type, *, base: str,
             sources: Iterable[Node], scope: str | None = None) -> str:
        """Add a new node made by this pass from ``sources``; returns its name."""
        sources = tuple(sources)
        node = Node(self.fresh_name(base), op, tuple(self.resolve(i) for i in inputs), attrs, type,
                    scope if scope is not None else (sources[0].scope if sources else ""),
                    Origin(self.pass_name, tuple(s.name for s in sources)))
        self.nodes.append(node)
        self.defined[node.name] = node
        return node.name

    def finish(self, *, drop_unused_constants: bool = False) -> Graph:
        outputs = tuple(self.resolve(o) for o in self.graph.outputs)
        constants = self.constants.values()
        if drop_unused_constants:
            used = {i for n in self.nodes for i in n.tensor_inputs} | set(outputs)
            constants = [c for c in constants if c.name in used]
        return self.graph.replace(nodes=tuple(self.nodes), constants=tuple(constants), outputs=outputs)
