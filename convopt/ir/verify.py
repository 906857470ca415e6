"""``verify(g)``: the invariants every graph keeps between passes.

- names are unique across inputs, constants and nodes;
- every node input is defined before the node (topological order); outputs are defined;
- each node has its op's attrs class and number of inputs, with None only in optional positions;
- getitem reads a tuple-typed value with an index in range;
- every node's recorded type equals the type its op computes from its input types. This runs the
  node's ATen call (``OPS[op].to_aten``) on meta tensors, so shape rules are never written twice.
  A layout (``TensorType.layout``) is storage, not type: the logical shapes are compared, and
  TensorType itself refuses a layout its shape can't have.
"""

from __future__ import annotations

import torch

from .graph import Graph, Node
from .ops import OPS, Op, aten_call, body_inputs
from .types import TensorType, TupleType, Type, type_of


class VerifyError(ValueError):
    pass


def _meta(t: Type):
    if isinstance(t, TupleType):
        return tuple(_meta(e) for e in t.elements)
    return torch.empty(t.shape, dtype=t.torch_dtype, device="meta")


def _check_node(n: Node, types: dict[str, Type]) -> None:
    info = OPS[n.op]
    count = len(n.inputs)
    if count < info.min_inputs or (info.max_inputs is not None and count > info.max_inputs):
        raise VerifyError(f"{n.op.value} takes {info.min_inputs}..{info.max_inputs or 'any'} inputs, got {count}")
    for pos, i in enumerate(n.inputs):
        if i is None:
            if pos not in info.optional_inputs:
                raise VerifyError(f"input {pos} of {n.op.value} may not be none")
        elif i not in types:
            raise VerifyError(f"uses %{i} before it is defined")
    if n.op is Op.FUSED_BLOCK and (not n.attrs.body or n.inputs != body_inputs(n.attrs.body)):
        raise VerifyError(f"a fused block's inputs are what its body reads, in order: "
                          f"{list(body_inputs(n.attrs.body))}, not {list(n.inputs)}")
    in_types = [types[i] if i is not None else None for i in n.inputs]
    if n.op is Op.GETITEM:
        src = in_types[0]
        if not isinstance(src, TupleType) or not 0 <= n.attrs.index < len(src.elements):
            raise VerifyError(f"getitem {n.attrs.index} of a value of type {src}")
    elif any(isinstance(t, TupleType) for t in in_types):
        raise VerifyError(f"{n.op.value} reads a tuple value directly; use getitem")
    fn, args, kwargs = aten_call(n.op, n.attrs, tuple(_meta(t) if t is not None else None for t in in_types))
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError:
        return  # an opaque op with no meta kernel: its recorded type is trusted
    except Exception as e:  # the op's own shape checks (e.g. channels vs groups) speak for it
        raise VerifyError(f"{n.op.value} rejects its inputs {[str(t) for t in in_types]}: {e}") from e
    inferred = type_of(result)
    if inferred != n.type.logical:
        raise VerifyError(f"type is {n.type} but {n.op.value} of {[str(t) for t in in_types]} gives {inferred}")


def verify(g: Graph) -> Graph:
    """Check ``g``; return it unchanged or raise VerifyError naming the node at fault."""
    types: dict[str, Type] = {}
    for v in g.inputs:
        if not isinstance(v.type, TensorType):
            raise VerifyError(f"input %{v.name} must have a tensor type")
        types[v.name] = v.type
    for c in g.constants:
        if c.name in types:
            raise VerifyError(f"constant %{c.name}: name already defined")
        if c.data is not None and TensorType.of(c.data) != c.type:
            raise VerifyError(f"constant %{c.name}: data is {TensorType.of(c.data)}, declared {c.type}")
        types[c.name] = c.type
    for n in g.nodes:
        if n.name in types:
            raise VerifyError(f"node %{n.name}: name already defined")
        try:
            _check_node(n, types)
        except VerifyError as e:
            raise VerifyError(f"node %{n.name} ({n.op.value}{', ' + n.scope if n.scope else ''}): {e}") from None
        types[n.name] = n.type
    for o in g.outputs:
        if o not in types:
            raise VerifyError(f"output %{o} is not defined in the graph")
    return g
