"""Constant folding: a node whose tensor inputs are all constants becomes a constant.

    op(c1, ..., cn)  =>  c   where c = op evaluated once now (its ATen call on the constants' values)
    op()             =>  c   for ATen generators with no tensor input (arange, zeros, full; not empty)

Chains fold in one run (each node reads the constants its inputs became), e.g. the weight standardization
of NFNets (a functional batch_norm over a reshaped constant weight) or EdgeNeXt's positional encoding
(arange, cumsum, sin and cos of the input's shape only).

e.g. ``reshape(gamma, (1, C, 1, 1))`` in a ConvNeXt layer scale, so ``mul(x, c)`` reads a constant
that later passes can fold into a conv. Preconditions: every tensor input is a constant with a value;
the op is deterministic (no dropout, no ATen op tagged ``nondeterministic_seeded``); the result is a
single tensor. The folded constant is not a trainable parameter, so this pass runs in the inference
pipeline only, after canonicalize.
"""

from __future__ import annotations

import torch

from ..ir.graph import Graph, GraphEditor
from ..ir.ops import Op, aten_call
from ..ir.types import TensorType
from .eliminate_dead_code import eliminate_dead_code


# ATen ops whose result is uninitialized memory: nothing to fold
_UNINITIALIZED = ("aten.empty.", "aten.empty_like.", "aten.empty_strided.", "aten.new_empty.")


def _foldable(node, inputs, constants) -> bool:
    if node.op is Op.DROPOUT or not isinstance(node.type, TensorType):
        return False
    if not node.tensor_inputs and (node.op is not Op.TORCH or node.attrs.target.startswith(_UNINITIALIZED)):
        return False  # a generator (arange, zeros, full) is folded; IR ops without inputs are not
    if node.op is Op.TORCH:
        target = node.attrs.resolve()
        if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
            return False
    return all(i in constants and constants[i].data is not None for i in inputs if i is not None)


def fold_constants(graph: Graph) -> Graph:
    editor = GraphEditor(graph, "fold_constants")
    changed = False
    for node in graph.nodes:
        inputs = tuple(editor.resolve(i) for i in node.inputs)  # a chain folds in one run: f(g(c)) -> c''
        if not _foldable(node, inputs, editor.constants):
            editor.keep(node)
            continue
        values = tuple(None if i is None else editor.constants[i].data for i in inputs)
        fn, args, kwargs = aten_call(node.op, node.attrs, values)
        with torch.no_grad():
            value = fn(*args, **kwargs).contiguous()
        base = f"{node.scope}.{node.name}" if node.scope else node.name
        editor.replace_uses(node.name, editor.add_constant(base, value))
        changed = True
    return eliminate_dead_code(editor.finish()) if changed else graph
