"""IR -> torch.fx.GraphModule: the optimized graph run by PyTorch's own kernels.

This is the reference backend (optimize(..., target="torch")) and the training path: constants become
module attributes under their IR names, so ``state_dict`` keys are the original model's where the
passes kept a weight's name. Parameters of the source model are ``nn.Parameter``s (trainable when
``trainable=True``); everything else is a buffer.
"""

from __future__ import annotations

from torch import fx, nn

from ..ir.graph import Graph
from ..ir.ops import aten_call


def owner_module(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """The submodule that holds attribute ``dotted`` (creating empty modules on the way) and its leaf name."""
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        child = module._modules.get(part)
        if child is None:
            child = nn.Module()
            module.add_module(part, child)
        module = child
    return module, leaf


def to_torch(graph: Graph, *, trainable: bool = False) -> fx.GraphModule:
    root = nn.Module()
    for c in graph.constants:
        if c.data is None:
            raise ValueError(f"constant %{c.name} has no value (a graph parsed from text); "
                             "pass the tensors to convopt.ir.parse(text, constants=...)")
        owner, leaf = owner_module(root, c.name)
        if c.is_parameter and c.data.is_floating_point():
            owner.register_parameter(leaf, nn.Parameter(c.data.clone(), requires_grad=trainable))
        else:
            owner.register_buffer(leaf, c.data.clone())

    fx_graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for v in graph.inputs:
        env[v.name] = fx_graph.placeholder(_identifier(v.name))
    for c in graph.constants:
        env[c.name] = fx_graph.get_attr(c.name)
    for n in graph.nodes:
        fn, args, kwargs = aten_call(n.op, n.attrs, tuple(None if i is None else env[i] for i in n.inputs))
        env[n.name] = fx_graph.call_function(fn, args, kwargs, name=_identifier(n.name))
    fx_graph.output(tuple(env[o] for o in graph.outputs))  # always a flat tuple, like graph.outputs
    return fx.GraphModule(root, fx_graph, class_name=f"{_identifier(graph.name)}Optimized")


def _identifier(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
