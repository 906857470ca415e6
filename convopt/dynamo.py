"""``torch.compile(model, backend="convopt")``: convopt as a TorchDynamo backend.

Dynamo traces the model's Python, breaks the graph where it must, guards, and hands each captured FX graph
to ``convopt_backend(gm, example_inputs, options=...)`` (registered through the ``torch_dynamo_backends``
entry point in pyproject.toml). Dynamo lifts the module's parameters and buffers to graph inputs; convopt
freezes them as the graph's constants (like Inductor's ``freezing``: convopt compiles inference graphs and
folds weights into kernels), keeps the other inputs as the graph's inputs, and runs ``convopt.optimize``
on the result: passes, lowerings, tuning records, TVM.

Shapes: convopt compiles for static shapes. A graph Dynamo marks dynamic (its second input shape, by
default) is compiled once per concrete signature it is called with, cached, so a new shape compiles again
rather than failing. Weights are read when a signature is compiled; changing them later needs
``torch._dynamo.reset()``, as with Inductor's freezing.

Graphs convopt must not take run as Dynamo gave them, with a warning: training-mode graphs (batch norm
with batch statistics, active dropout), and graphs ``optimize`` fails on (``options={"strict": True}``
raises instead).

Options (``torch.compile(model, backend="convopt", options={...})``): ``target``, ``lowering``,
``tuning_logs``, ``skip_passes``, ``check``, ``dump_ir`` as in ``convopt.optimize``, and ``strict``
(refuse ops TVM can't compile, and raise instead of running a graph eagerly).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import torch
from torch import fx, nn

from .backends.torch_backend import owner_module

OPTIONS = ("target", "lowering", "tuning_logs", "skip_passes", "check", "dump_ir", "strict")

# ops whose graph means training semantics convopt's inference graphs don't have: (callable, the
# position of the "training" argument, its keyword)
_TRAINING_FLAGS: tuple[tuple[Callable, int, str], ...] = (
    (torch.nn.functional.batch_norm, 5, "training"),
    (torch.batch_norm, 5, "training"),
    (torch.nn.functional.dropout, 2, "training"),
    (torch.nn.functional.dropout2d, 2, "training"),
    (torch.dropout, 2, "train"),
)


class ConvoptBackendError(RuntimeError):
    pass


def _state_path(placeholder: fx.Node) -> str | None:
    """``"layer1.0.conv1.weight"`` for a placeholder Dynamo lifted from a module's parameter or buffer,
    else None (a real input)."""
    grapharg = placeholder.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = source.name if isinstance(getattr(source, "name", None), str) else source.name() if source else ""
    if "._parameters[" not in name and "._buffers[" not in name:
        return None
    return ".".join(re.findall(r"\[['\"]([^'\"]+)['\"]\]", name)[1:]) or placeholder.name


def _training_op(gm: fx.GraphModule) -> str | None:
    for node in gm.graph.nodes:
        for fn, position, keyword in _TRAINING_FLAGS:
            if node.op == "call_function" and node.target is fn:
                flag = node.kwargs.get(keyword, node.args[position] if len(node.args) > position else False)
                if flag is True:
                    return getattr(fn, "__name__", str(fn))
    return None


class _Frozen(nn.Module):
    """Dynamo's graph with its lifted parameters and buffers as this module's own: forward takes the real
    inputs only (and fixes the graph's integer inputs to the values of one call)."""

    def __init__(self, gm: fx.GraphModule, args: list, state: dict[int, str], fixed: dict[int, Any]):
        super().__init__()
        self.gm = gm
        self._state, self._fixed = state, fixed
        self._slots = [i for i in range(len(args)) if i not in state and i not in fixed]
        for i, path in state.items():
            owner, leaf = owner_module(self, f"frozen.{path}")
            value = args[i].detach()
            if isinstance(args[i], nn.Parameter):
                owner.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
            else:
                owner.register_buffer(leaf, value)
        self._paths = {i: f"frozen.{path}" for i, path in state.items()}

    def _tensor(self, path: str) -> torch.Tensor:
        owner, _, leaf = path.rpartition(".")
        return getattr(self.get_submodule(owner), leaf)

    def forward(self, *inputs):
        args: list = [None] * (len(self._slots) + len(self._state) + len(self._fixed))
        for i, value in zip(self._slots, inputs):
            args[i] = value
        for i, path in self._paths.items():
            args[i] = self._tensor(path)
        for i, value in self._fixed.items():
            args[i] = value
        return tuple(self.gm(*args))


class ConvoptCompiled:
    """What the backend returns to Dynamo: compiles ``gm`` with convopt per concrete input signature."""

    def __init__(self, gm: fx.GraphModule, example_inputs: list, options: dict[str, Any]):
        self.gm, self.options = gm, options
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.state = {i: path for i, n in enumerate(placeholders) if (path := _state_path(n)) is not None}
        self.compiled: dict[tuple, Callable] = {}
        from torch._subclasses.fake_tensor import FakeTensor

        if any(isinstance(example_inputs[i], FakeTensor) for i in self.state):
            raise ConvoptBackendError("Dynamo gave fake tensors for the model's weights; convopt folds real weights "
                                      "into its kernels and needs them")
        if torch.is_grad_enabled() and any(isinstance(example_inputs[i], torch.Tensor) and example_inputs[i].requires_grad
                                           for i in self.state):
            warnings.warn("convopt compiles inference graphs: the outputs of torch.compile(backend='convopt') carry "
                          "no gradients (call the model under torch.no_grad() or torch.inference_mode() to say so)",
                          stacklevel=3)
        self._compile(list(example_inputs))

    def _signature(self, args: list) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else ("int", int(a))
                     for i, a in enumerate(args) if i not in self.state)

    def _compile(self, args: list) -> Callable:
        from .optimize import optimize

        fixed = {i: int(a) for i, a in enumerate(args) if i not in self.state and not isinstance(a, torch.Tensor)}
        frozen = _Frozen(self.gm, args, self.state, fixed).eval()
        inputs = tuple(a for i, a in enumerate(args) if i not in self.state and i not in fixed)
        kwargs = {k: v for k, v in self.options.items() if k in OPTIONS}
        with torch.no_grad():
            fast = optimize(frozen, inputs, **kwargs)
        self.compiled[self._signature(args)] = fast
        return fast

    def __call__(self, *args):
        args = list(args)
        fast = self.compiled.get(self._signature(args)) or self._compile(args)
        inputs = [a for i, a in enumerate(args) if i not in self.state and isinstance(a, torch.Tensor)]
        return list(fast(*inputs))


def convopt_backend(gm: fx.GraphModule, example_inputs: list, options: dict[str, Any] | None = None,
                    **kwargs) -> Callable:
    """The TorchDynamo backend ``"convopt"`` (see the module docstring)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConvoptBackendError(f"unknown convopt option(s) {unknown}; known: {list(OPTIONS)}")
    strict = bool(options.get("strict", False))
    training = _training_op(gm)
    if training is not None:
        message = (f"this graph runs {training} in training mode; convopt compiles inference graphs. "
                   "Call model.eval() before torch.compile(backend='convopt')")
        if strict:
            raise ConvoptBackendError(message)
        warnings.warn(message + "; running this graph as Dynamo captured it", stacklevel=2)
        return gm.forward
    try:
        return ConvoptCompiled(gm, example_inputs, options)
    except Exception as e:
        if strict:
            raise
        warnings.warn(f"convopt could not compile a graph Dynamo captured ({type(e).__name__}: {e}); "
                      "running it as captured", stacklevel=2)
        return gm.forward
