"""The per-op PyTorch fallback: a node with no TVM lowering runs its ATen op inside the compiled TVM module.

relax_emit emits such a node as ``relax.call_dps_packed(name, inputs, output types)``. ``name`` is a global
packed function that convopt registers in this process (``register``): TVM calls it with the input buffers
and the output buffers it allocated (destination-passing style); it wraps both as torch tensors through
DLPack (no copy), runs the node's ATen call (``ir.ops.aten_call``, the same call the torch backend makes)
and copies the result into the output buffers. The rest of the graph stays on TVM.

The name is a content hash of what the node computes (op, attrs, input and output types), so equal nodes
share one function and a saved artifact finds its functions again in a new process: ``load`` re-registers
them from the artifact's IR. Each function counts its calls and seconds (``FALLBACK_TIME``) so
``OptimizedModule.summary()`` can show the fallbacks' share of the time.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict

import torch
import tvm
from tvm import relax

from ..ir.graph import Graph, Node, op_label
from ..ir.literals import format_attrs
from ..ir.ops import aten_call, attr_items
from ..ir.types import TensorType, full_dtype_name

PREFIX = "convopt.torch_fallback."

# packed function name -> [calls, seconds] in this process, for summary()
FALLBACK_TIME: dict[str, list] = defaultdict(lambda: [0, 0.0])


class FallbackError(RuntimeError):
    """A fallback op that PyTorch could not run as captured (the message names the node)."""


def function_name(graph: Graph, n: Node) -> str:
    """The global packed function that computes ``n``: the op's name and a hash of what it computes."""
    signature = "|".join([op_label(n), format_attrs(attr_items(n.attrs)), str(n.type),
                          *(str(graph.types[i]) if i is not None else "none" for i in n.inputs)])
    label = "".join(ch if ch.isalnum() else "_" for ch in op_label(n))
    return f"{PREFIX}{label}.{hashlib.sha1(signature.encode()).hexdigest()[:12]}"


def _output_types(n: Node) -> list[TensorType]:
    return list(n.type.elements) if hasattr(n.type, "elements") else [n.type]


def _make_kernel(n: Node, name: str):
    present = [i is not None for i in n.inputs]  # optional inputs (None) are not passed to TVM
    n_in = sum(present)
    expected = _output_types(n)
    label = op_label(n)

    def kernel(*buffers) -> None:
        start = time.perf_counter()
        tensors = iter(torch.from_dlpack(b) for b in buffers[:n_in])
        inputs = tuple(next(tensors) if p else None for p in present)
        fn, args, kwargs = aten_call(n.op, n.attrs, inputs)
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            raise FallbackError(f"node %{n.name} ({label}) failed in its PyTorch fallback: {e}") from e
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(results) != len(expected):
            raise FallbackError(f"node %{n.name} ({label}) returned {len(results)} tensors, captured {len(expected)}")
        for out, value, t in zip(buffers[n_in:], results, expected):
            if tuple(value.shape) != t.shape:
                raise FallbackError(f"node %{n.name} ({label}) returned shape {tuple(value.shape)}, "
                                    f"captured {list(t.shape)}")
            torch.from_dlpack(out).copy_(value)
        stats = FALLBACK_TIME[name]
        stats[0] += 1
        stats[1] += time.perf_counter() - start

    return kernel


def register(graph: Graph, n: Node) -> str:
    """Register the packed function that runs ``n`` with PyTorch (idempotent); returns its name."""
    name = function_name(graph, n)
    if tvm.get_global_func(name, allow_missing=True) is None:
        tvm.register_global_func(name, _make_kernel(n, name))
    return name


def emit_call(graph: Graph, n: Node, inputs: list) -> relax.Expr:
    """The Relax call of ``n``'s fallback function on its (non-None) ``inputs``; registers the function."""
    if any(t.layout for t in _output_types(n)):
        raise FallbackError(f"node %{n.name} ({op_label(n)}) has a blocked output; it can't run in PyTorch")
    name = register(graph, n)
    out = [relax.TensorType(t.shape, full_dtype_name(t.dtype)) for t in _output_types(n)]
    return relax.call_dps_packed(name, [x for x in inputs if x is not None],
                                 out if hasattr(n.type, "elements") else out[0])


def register_all(graph: Graph, names: list[str]) -> None:
    """Register the fallback functions ``names`` (from a saved artifact) from the artifact's graph."""
    wanted = set(names)
    for n in graph.nodes:
        if function_name(graph, n) in wanted:
            register(graph, n)
            wanted.discard(function_name(graph, n))
    if wanted:
        raise FallbackError(f"the artifact calls PyTorch fallbacks its graph doesn't define: {sorted(wanted)}")
