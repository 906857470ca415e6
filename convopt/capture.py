"""torch -> convopt IR. Normalization happens here, once, so no pass ever looks at ATen arguments.

``capture(model, example_inputs)`` exports the model with torch.export (falling back to exporting
its torch.fx.symbolic_trace), functionalizes it (``run_decompositions({})``: in-place ops and views
become pure ops, high-level ops such as conv2d and linear stay), and converts each ATen call:

- arguments are bound to the op's schema (keyword or positional, defaults filled);
- ops convopt models become typed nodes (see ``_NORMALIZERS``); everything else stays an opaque
  ``torch`` node with its ATen target and positional arguments, so capture never fails on an op;
- parameters, buffers and lifted constants become graph constants named by their state_dict key;
- eval-mode BatchNorm becomes one ``batch_norm`` node reading its four constants;
- shapes and dtypes come from the example inputs (the exported FakeTensor metadata).
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.export.graph_signature import InputKind
from torch.utils import _pytree as pytree

from .ir import ops as O
from .ir.graph import Constant, Graph, Node, Value, unique_name
from .ir.literals import format_value
from .ir.ops import Op
from .ir.types import TensorType, type_of

aten = torch.ops.aten


class CaptureError(RuntimeError):
    pass


@dataclass(frozen=True)
class Captured:
    """A captured graph and the pytree specs that turn flat tensors back into the model's call/return."""

    graph: Graph
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec


def capture(model: torch.nn.Module, example_inputs: Any, *, mode: str = "inference") -> Graph:
    """Capture ``model`` called as ``model(*example_inputs)`` into a convopt Graph."""
    return capture_program(model, example_inputs, mode=mode).graph


@contextlib.contextmanager
def modes_set(model: torch.nn.Module, mode: str | None):
    """Run with ``model`` in eval mode (mode "inference") or as it is (None); restore every submodule's
    own flag afterwards (``model.train(True)`` would also flip BatchNorms the user froze)."""
    saved = [(m, m.training) for m in model.modules()]
    if mode == "inference":
        model.eval()
    try:
        yield model
    finally:
        for m, training in saved:
            m.training = training


def as_args(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def capture_program(model: torch.nn.Module, example_inputs: Any, *, mode: str = "inference") -> Captured:
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', not {mode!r}")
    args = as_args(example_inputs)
    flat, _ = pytree.tree_flatten(args)
    if not flat or not all(isinstance(t, torch.Tensor) for t in flat):
        raise CaptureError("example_inputs must be a tensor or a (nested) tuple of tensors")
    with modes_set(model, "inference" if mode == "inference" else None):
        ep = _export(model, args)
    mutated = dict(ep.graph_signature.buffers_to_mutate)
    if mutated or ep.graph_signature.user_inputs_to_mutate:
        names = sorted(set(mutated.values()))[:3]
        raise CaptureError(
            f"the model mutates state when called ({', '.join(names) or 'an input'}); in mode='{mode}' "
            "convopt needs a pure forward. BatchNorm in training mode updates running statistics: put the "
            "BatchNorm modules in eval mode (transfer learning) or use mode='inference'."
        )
    graph = _convert(ep, name=type(model).__name__, mode=mode)
    return Captured(graph, ep.call_spec.in_spec, ep.call_spec.out_spec)


# ---------------------------------------------------------------- export, with a fallback


def _failing_module(model: torch.nn.Module, exc: BaseException) -> str:
    """The innermost submodule of ``model`` whose forward was running when ``exc`` was raised."""
    names = {id(m): name for name, m in model.named_modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names:
            path = names[id(owner)] or "<root>"
            found = f"'{path}' ({type(owner).__name__})"
        tb = tb.tb_next
    return found or f"<root> ({type(model).__name__})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _export(model: torch.nn.Module, args: tuple) -> torch.export.ExportedProgram:
    try:
        ep = torch.export.export(model, args)
    except Exception as export_error:
        where = _failing_module(model, export_error)
        try:
            traced = torch.fx.symbolic_trace(model)
            ep = torch.export.export(traced, args)
        except Exception as trace_error:
            raise CaptureError(
                f"cannot capture {type(model).__name__}: torch.export failed in module {where}: "
                f"{_first_line(export_error)}; the torch.fx.symbolic_trace fallback failed in module "
                f"{_failing_module(model, trace_error)}: {_first_line(trace_error)}"
            ) from export_error
    if _needs_functionalization(ep.graph):
        ep = ep.run_decompositions({})
    return ep


def _aliases_input(target: Any) -> int | None:
    """For an ATen op whose result aliases an argument (views and in-place ops), that argument's index."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.returns or schema.returns[0].alias_info is None:
        return None
    alias_set = schema.returns[0].alias_info.before_set
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.before_set == alias_set:
            return i
    return None


def _functional_variant(target: Any) -> Any:
    """aten.relu_.default -> aten.relu.default (None when the in-place op has no functional twin)."""
    name = target._schema.name.split("::")[-1]
    if not name.endswith("_"):
        return None
    packet = getattr(aten, name[:-1], None)
    return getattr(packet, target._overloadname, None) if packet is not None else None


def _needs_functionalization(graph: torch.fx.Graph) -> bool:
    """Whether in-place ops here could be observed through an alias, so the graph must be functionalized.

    torch.export's graph already routes later readers of an in-place op's tensor to the op's node.
    That is exact unless a mutated tensor is reachable another way: through a view, or because it is
    a graph input or a weight. Functionalizing (run_decompositions) is correct always but slow (3x the
    export time on MobileOne), so it runs only then.
    """
    family: dict[torch.fx.Node, torch.fx.Node] = {}

    def root(n):
        while family.get(n, n) is not n:
            n = family[n]
        return n

    mutated, viewed = set(), set()
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        schema = node.target._schema
        index = _aliases_input(node.target)
        if index is not None and isinstance(node.args[index] if index < len(node.args) else None, torch.fx.Node):
            family[node] = root(node.args[index])
        writes = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        if writes:
            if _functional_variant(node.target) is None or len(writes) > 1:
                return True
            mutated.add(root(node))
        elif index is not None:
            viewed.add(root(node))
    return any(m in viewed or m.op == "placeholder" for m in mutated)


# ---------------------------------------------------------------- ATen -> IR


def _bind(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by schema name, positional or keyword alike, with defaults filled."""
    bound = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            raise CaptureError(f"{target}: missing argument {arg.name!r}")
    return bound


def _pair(v) -> tuple[int, int]:
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def _rank(v) -> int:
    return v.meta["val"].dim()


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


Normalized = tuple[Op, list, Any] | None  # (op, tensor inputs, attrs); None keeps the node opaque


def _conv(a, node) -> Normalized:
    if a.get("transposed", False) or _rank(a["input"]) != 4 or _rank(a["weight"]) != 4:
        return None
    if any(a.get("output_padding", [0]) or [0]):
        return None
    padding = a["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same": symmetric only when the total padding is even in both dims
            kh, kw = a["weight"].meta["val"].shape[2:]
            dil = _pair(a["dilation"])
            totals = (dil[0] * (kh - 1), dil[1] * (kw - 1))
            if any(t % 2 for t in totals) or _pair(a["stride"]) != (1, 1):
                return None
            padding = (totals[0] // 2, totals[1] // 2)
    attrs = O.Conv2dAttrs(_pair(a["stride"]), _pair(padding), _pair(a["dilation"]), int(a["groups"]))
    return Op.CONV2D, [a["input"], a["weight"], a["bias"]], attrs


def _batch_norm(a, node) -> Normalized:
    if a.get("training", False) or a["running_mean"] is None or a["running_var"] is None:
        return None
    return (Op.BATCH_NORM, [a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"]],
            O.NormAttrs(float(a["eps"])))


def _binary(op: Op) -> Callable:
    def normalize(a, node) -> Normalized:
        other = a["other"]
        if a.get("alpha", 1) != 1 or a.get("rounding_mode") is not None:
            return None
        if not isinstance(a["self"], torch.fx.Node):
            return None
        if isinstance(other, torch.fx.Node):
            return op, [a["self"], other], O.BinaryAttrs()
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return op, [a["self"]], O.BinaryAttrs(other)
        return None

    return normalize


def _unary(op: Op) -> Callable:
    return lambda a, node: (op, [a["self"]], O.NoAttrs())


def _reshape(a, node) -> Normalized:
    return Op.RESHAPE, [a["self"] if "self" in a else a["input"]], O.ShapeAttrs(tuple(node.meta["val"].shape))


def _permute(a, node) -> Normalized:
    rank = _rank(a["self"])
    if "dims" in a:
        dims = tuple(_dim(d, rank) for d in a["dims"])
    else:
        perm = list(range(rank))
        d0, d1 = (_dim(a["dim0"], rank), _dim(a["dim1"], rank)) if "dim0" in a else (0, 1)
        perm[d0], perm[d1] = perm[d1], perm[d0]
        dims = tuple(perm)
    return Op.PERMUTE, [a["self"]], O.PermuteAttrs(dims)


def _max_pool(a, node) -> Normalized:
    if _rank(a["self"]) != 4:
        return None
    stride = a["stride"] or a["kernel_size"]
    return Op.MAX_POOL2D, [a["self"]], O.MaxPool2dAttrs(
        _pair(a["kernel_size"]), _pair(stride), _pair(a["padding"]), _pair(a["dilation"]), bool(a["ceil_mode"]))


def _avg_pool(a, node) -> Normalized:
    if _rank(a["self"]) != 4:
        return None
    stride = a["stride"] or a["kernel_size"]
    return Op.AVG_POOL2D, [a["self"]], O.AvgPool2dAttrs(
        _pair(a["kernel_size"]), _pair(stride), _pair(a["padding"]), bool(a["ceil_mode"]),
        bool(a["count_include_pad"]), a["divisor_override"])


def _dropout(a, node) -> Normalized:
    if not a["train"] or a["p"] == 0:
        return Op.IDENTITY, [a["input"]], O.NoAttrs()
    return Op.DROPOUT, [a["input"]], O.DropoutAttrs(float(a["p"]))


def _clamp(a, node) -> Normalized:
    lo = a.get("min", a.get("min_val"))
    hi = a.get("max", a.get("max_val"))
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        return None
    return Op.CLAMP, [a["self"]], O.ClampAttrs(None if lo is None else float(lo), None if hi is None else float(hi))


def _split(a, node) -> Normalized:
    rank = _rank(a["self"])
    dim = _dim(a["dim"], rank)
    sizes = tuple(int(t.shape[dim]) for t in node.meta["val"])
    return Op.SPLIT, [a["self"]], O.SplitAttrs(sizes, dim)


def _mean(a, node) -> Normalized:
    if a["dim"] is None or a.get("dtype") is not None:
        return None
    rank = _rank(a["self"])
    return Op.MEAN, [a["self"]], O.ReduceAttrs(tuple(_dim(d, rank) for d in a["dim"]), bool(a["keepdim"]))


def _softmax(a, node) -> Normalized:
    if a.get("dtype") is not None or a.get("half_to_float"):
        return None
    return Op.SOFTMAX, [a["self"]], O.DimAttrs(_dim(a["dim"], _rank(a["self"])))


_NORMALIZERS: dict[Any, Callable[[dict, torch.fx.Node], Normalized]] = {
    aten.conv2d.default: _conv,
    aten.conv2d.padding: _conv,
    aten.convolution.default: _conv,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten.batch_norm.default: _batch_norm,
    aten.linear.default: lambda a, n: (Op.LINEAR, [a["input"], a["weight"], a["bias"]], O.NoAttrs()),
    aten.layer_norm.default: lambda a, n: (
        Op.LAYER_NORM, [a["input"], a["weight"], a["bias"]],
        O.LayerNormAttrs(tuple(a["normalized_shape"]), float(a["eps"]))),
    aten.native_layer_norm.default: lambda a, n: (
        Op.LAYER_NORM, [a["input"], a["weight"], a["bias"]],
        O.LayerNormAttrs(tuple(a["normalized_shape"]), float(a["eps"]))),
    aten.group_norm.default: lambda a, n: (
        Op.GROUP_NORM, [a["input"], a["weight"], a["bias"]], O.GroupNormAttrs(int(a["num_groups"]), float(a["eps"]))),
    aten.native_group_norm.default: lambda a, n: (
        Op.GROUP_NORM, [a["input"], a["weight"], a["bias"]], O.GroupNormAttrs(int(a["group"]), float(a["eps"]))),
    aten.relu.default: _unary(Op.RELU),
    aten.relu6.default: lambda a, n: (Op.CLAMP, [a["self"]], O.ClampAttrs(0.0, 6.0)),
    aten.hardtanh.default: _clamp,
    aten.clamp.default: _clamp,
    aten.gelu.default: lambda a, n: (Op.GELU, [a["self"]], O.GeluAttrs(a["approximate"])),
    aten.silu.default: _unary(Op.SILU),
    aten.sigmoid.default: _unary(Op.SIGMOID),
    aten.tanh.default: _unary(Op.TANH),
    aten.rsqrt.default: _unary(Op.RSQRT),
    aten.hardswish.default: _unary(Op.HARDSWISH),
    aten.hardsigmoid.default: _unary(Op.HARDSIGMOID),
    aten.add.Tensor: _binary(Op.ADD),
    aten.add.Scalar: _binary(Op.ADD),
    aten.sub.Tensor: _binary(Op.SUB),
    aten.sub.Scalar: _binary(Op.SUB),
    aten.mul.Tensor: _binary(Op.MUL),
    aten.mul.Scalar: _binary(Op.MUL),
    aten.div.Tensor: _binary(Op.DIV),
    aten.div.Scalar: _binary(Op.DIV),
    aten.max_pool2d.default: _max_pool,
    aten.max_pool2d_with_indices.default: _max_pool,
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: lambda a, n: (
        (Op.ADAPTIVE_AVG_POOL2D, [a["self"]], O.AdaptivePool2dAttrs(_pair(a["output_size"])))
        if _rank(a["self"]) == 4 else None),
    aten._adaptive_avg_pool2d.default: lambda a, n: (
        (Op.ADAPTIVE_AVG_POOL2D, [a["self"]], O.AdaptivePool2dAttrs(_pair(a["output_size"])))
        if _rank(a["self"]) == 4 else None),
    aten.mean.dim: _mean,
    aten._softmax.default: _softmax,
    aten.softmax.int: _softmax,
    aten.view.default: _reshape,
    aten.reshape.default: _reshape,
    aten._unsafe_view.default: _reshape,
    aten.flatten.using_ints: _reshape,
    aten.unflatten.int: _reshape,
    aten.squeeze.dim: _reshape,
    aten.squeeze.dims: _reshape,
    aten.unsqueeze.default: _reshape,
    aten.permute.default: _permute,
    aten.transpose.int: _permute,
    aten.t.default: _permute,
    aten.cat.default: lambda a, n: (Op.CAT, list(a["tensors"]), O.DimAttrs(_dim(a["dim"], _rank(a["tensors"][0])))),
    aten.split_with_sizes.default: _split,
    aten.split.Tensor: _split,
    aten.clone.default: _unary(Op.IDENTITY),
    aten.alias.default: _unary(Op.IDENTITY),
    aten.detach.default: _unary(Op.IDENTITY),
    aten.lift_fresh_copy.default: _unary(Op.IDENTITY),
    aten.dropout.default: _dropout,
    aten.native_dropout.default: _dropout,
}

# ATen ops returning a tuple whose first element is the result and the rest are training-time extras
# (saved statistics, pooling indices, dropout masks). They become single-result IR ops when nothing
# reads the extras.
_FIRST_RESULT_OPS = {
    aten._native_batch_norm_legit_no_training.default,
    aten.native_layer_norm.default,
    aten.native_group_norm.default,
    aten.max_pool2d_with_indices.default,
    aten.native_dropout.default,
}


def _scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _literal(value: Any, where: str) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple):
        return tuple(_literal(v, where) for v in value)
    try:
        format_value(value)
    except TypeError as e:
        raise CaptureError(f"{where}: {e}") from None
    return value


class _Converter:
    def __init__(self, ep: torch.export.ExportedProgram, name: str, mode: str):
        self.ep = ep
        self.name = name
        self.mode = mode
        self.names: dict[torch.fx.Node, str] = {}  # fx node -> IR value name
        self.taken: set[str] = set()
        self.inputs: list[Value] = []
        self.constants: list[Constant] = []
        self.nodes: list[Node] = []
        self.node_types: dict[str, Any] = {}  # IR node name -> its type, for getitem on converted ops
        self.results: dict[torch.fx.Node, list[str]] = {}  # an inlined higher-order op -> its results' names

    def unique(self, base: str) -> str:
        return unique_name(base, self.taken)

    def ref(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, torch.fx.Node):
            raise CaptureError(f"expected a tensor, got {value!r}")
        return self.names[value]

    def placeholders(self) -> None:
        sig = self.ep.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs}
        params = set(sig.parameters)
        for node in self.ep.graph.nodes:
            if node.op != "placeholder":
                continue
            spec = specs[node.name]
            if spec.kind is InputKind.USER_INPUT:
                val = node.meta["val"]
                if not isinstance(val, torch.Tensor):
                    raise CaptureError(f"input {node.name!r} is not a tensor ({type(val).__name__})")
                name = self.unique(node.name)
                self.inputs.append(Value(name, TensorType.of(val)))
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                source = self.ep.state_dict if spec.target in self.ep.state_dict else self.ep.constants
                name = self.unique(spec.target)
                self.constants.append(Constant.of(name, source[spec.target], spec.target in params))
            else:
                raise CaptureError(f"unsupported graph input {node.name!r} of kind {spec.kind.name}")
            self.names[node] = name

    def call(self, node: torch.fx.Node) -> None:
        target = node.target
        val = node.meta.get("val")
        if target is operator.getitem and node.args[0] in self.results:
            self.names[node] = self.results[node.args[0]][node.args[1]]
            return
        if isinstance(target, torch._ops.HigherOrderOperator):
            self.inline(node)
            return
        if target is operator.getitem:
            src, index = node.args
            if isinstance(self.node_types.get(self.names.get(src)), TensorType):
                if index != 0:
                    raise CaptureError(f"node {node.name}: result {index} of {src.name} is not modelled")
                self.names[node] = self.names[src]  # first result of a single-result IR op
                return
            self.emit(node, Op.GETITEM, [self.names[src]], O.IndexAttrs(int(index)), type_of(val))
            return
        if not isinstance(target, torch._ops.OpOverload):
            raise CaptureError(f"node {node.name}: cannot capture a call to {target!r} (not an ATen op)")
        if target._schema.is_mutable:
            # An in-place op on a tensor nothing else aliases (_needs_functionalization checked that).
            target = _functional_variant(target)
        if val is None and not node.users:
            return  # a trace-time assertion such as _assert_tensor_metadata: no value, nothing to keep
        bound = _bind(target, node.args, node.kwargs)
        normalize = _NORMALIZERS.get(target)
        normalized = normalize(bound, node) if normalize else None
        if normalized is not None and target in _FIRST_RESULT_OPS:
            if any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
                normalized = None  # the extras are read: keep the ATen op as it is
            else:
                val = val[0]
        if normalized is None:
            self.opaque(node, target, bound)
            return
        op, inputs, attrs = normalized
        self.emit(node, op, [self.ref(i) for i in inputs], attrs, type_of(val))

    def inline(self, node: torch.fx.Node) -> None:
        """The nodes of a higher-order op's body in its place, where running the body is what the op does in
        convopt's float32 graph: torch.autocast(enabled=False) regions (timm's EfficientViT attention keeps
        float32 that way) and, for inference, torch.no_grad() / set_grad_enabled regions. Autocast that is on
        would compute in another dtype, and a grad-mode region in mode="train" decides what is differentiated:
        both are refused by name, as is any other higher-order op."""
        op = node.target.name()
        if op == "wrap_with_autocast":
            device, dtype, enabled, _cache, body, *operands = node.args
            if enabled:
                raise CaptureError(f"node {node.name}: module '{_scope(node)}' runs under torch.autocast("
                                   f"{device!r}, dtype={dtype}); convopt computes in float32 and would not match "
                                   "it: disable the autocast region or run the model as it is")
        elif op == "wrap_with_set_grad_enabled" and self.mode == "inference":
            _enabled, body, *operands = node.args
        else:
            why = (" in mode='train' (a grad-mode region decides what training differentiates)"
                   if op == "wrap_with_set_grad_enabled" else "")
            raise CaptureError(f"node {node.name}: cannot capture higher-order op {op} in module '{_scope(node)}'"
                               f"{why}; convopt inlines torch.autocast(enabled=False) regions, and grad-mode "
                               "regions for inference")
        graph = getattr(self.ep.graph_module, body.target).graph
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        for placeholder, operand in zip(inputs, operands, strict=True):
            self.names[placeholder] = self.names[operand]
        for n in graph.nodes:
            if n.op == "call_function":
                self.call(n)
            elif n.op == "output":
                self.results[node] = [self.names[o] for o in pytree.tree_leaves(n.args[0])]

    def opaque(self, node: torch.fx.Node, target, bound: dict) -> None:
        inputs: list[str] = []

        def convert(v):
            if isinstance(v, torch.fx.Node):
                inputs.append(self.names[v])
                return O.Ref(len(inputs) - 1)
            if isinstance(v, (list, tuple)):
                return tuple(convert(e) for e in v)
            return _literal(v, f"node {node.name} ({target})")

        args = tuple(convert(v) for v in bound.values())
        val = node.meta.get("val")
        if isinstance(val, (list, tuple)):
            val = [v for v in val if v is not None]
        self.emit(node, Op.TORCH, inputs, O.TorchAttrs(str(target), args), type_of(val))

    def emit(self, node, op, inputs, attrs, ty) -> None:
        # Names say what a node is: conv2d_3, batch_norm_3, or the ATen name of an opaque op.
        name = self.unique(attrs.target.split(".")[1] if op is Op.TORCH else op.value)
        self.nodes.append(Node(name, op, tuple(inputs), attrs, ty, _scope(node)))
        self.node_types[name] = ty
        self.names[node] = name

    def run(self) -> Graph:
        self.placeholders()
        outputs: list[str] = []
        for node in self.ep.graph.nodes:
            if node.op == "call_function":
                try:
                    self.call(node)
                except CaptureError:
                    raise
                except Exception as e:
                    raise CaptureError(f"node {node.name} ({node.target}) in module '{_scope(node)}': {e}") from e
            elif node.op == "output":
                for o in pytree.tree_leaves(node.args[0]):
                    if not isinstance(o, torch.fx.Node):
                        raise CaptureError(f"the model returns a non-tensor value {o!r}")
                    outputs.append(self.names[o])
        return Graph(tuple(self.inputs), tuple(self.constants), tuple(self.nodes), tuple(outputs), name=self.name)


def _convert(ep: torch.export.ExportedProgram, name: str, mode: str = "inference") -> Graph:
    return _Converter(ep, name, mode).run()
