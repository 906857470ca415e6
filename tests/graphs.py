"""Small IR graphs built by hand for tests: types are computed by running each op on meta tensors."""

from __future__ import annotations

import torch

from convopt.ir import Constant, Graph, Node, Op, Value
from convopt.ir.ops import aten_call
from convopt.ir.types import TensorType, type_of


class Builder:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.constants: list[Constant] = []
        self.nodes: list[Node] = []
        self.types: dict[str, object] = {}

    def input(self, name: str, shape, dtype="f32") -> str:
        self.inputs.append(Value(name, TensorType(tuple(shape), dtype)))
        self.types[name] = self.inputs[-1].type
        return name

    def const(self, name: str, tensor: torch.Tensor, is_parameter: bool = True) -> str:
        self.constants.append(Constant.of(name, tensor, is_parameter))
        self.types[name] = self.constants[-1].type
        return name

    def node(self, op: Op, inputs, attrs, name: str | None = None, scope: str = "") -> str:
        name = name or f"{op.value}_{len(self.nodes)}"
        metas = []
        for i in inputs:
            t = self.types[i] if i is not None else None
            if t is None:
                metas.append(None)
            elif isinstance(t, TensorType):
                metas.append(torch.empty(t.shape, dtype=t.torch_dtype, device="meta"))
            else:
                metas.append(tuple(torch.empty(e.shape, dtype=e.torch_dtype, device="meta") for e in t.elements))
        fn, args, kwargs = aten_call(op, attrs, tuple(metas))
        ty = type_of(fn(*args, **kwargs))
        self.nodes.append(Node(name, op, tuple(inputs), attrs, ty, scope))
        self.types[name] = ty
        return name

    def graph(self, *outputs: str) -> Graph:
        return Graph(tuple(self.inputs), tuple(self.constants), tuple(self.nodes), outputs, name=self.name)
