"""The ops of the convopt IR, their typed attributes, and how each one runs as an ATen op.

Per-op behaviour lives in one table, ``OPS`` (JAX style): the attrs class, the number of tensor
inputs, and ``to_aten``, which turns (attrs, inputs) into an ATen call. The torch backend emits those
calls and ``verify`` runs them on meta tensors to check shapes, so an op is defined in one place.

Ops convopt does not model are kept as ``Op.TORCH`` nodes: the ATen target and its normalized
arguments, where ``Ref(i)`` stands for the node's i-th tensor input.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable

import torch

aten = torch.ops.aten


class Op(enum.Enum):
    CONV2D = "conv2d"
    LINEAR = "linear"
    BATCH_NORM = "batch_norm"  # eval mode: running statistics, one op with its four constants
    LAYER_NORM = "layer_norm"
    CHANNEL_NORM = "channel_norm"  # layer norm over the channels of each pixel of N,C,H,W (timm's LayerNorm2d)
    GROUP_NORM = "group_norm"
    RELU = "relu"
    CLAMP = "clamp"  # relu6 and hardtanh are clamps
    GELU = "gelu"
    SILU = "silu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    RSQRT = "rsqrt"
    HARDSWISH = "hardswish"
    HARDSIGMOID = "hardsigmoid"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    MAX_POOL2D = "max_pool2d"
    AVG_POOL2D = "avg_pool2d"
    ADAPTIVE_AVG_POOL2D = "adaptive_avg_pool2d"
    MEAN = "mean"
    SOFTMAX = "softmax"
    RESHAPE = "reshape"  # view, reshape, flatten, squeeze, unsqueeze: all the same shape change
    PERMUTE = "permute"
    CAT = "cat"
    SPLIT = "split"
    GETITEM = "getitem"
    DROPOUT = "dropout"  # only in training graphs; eval-mode dropout is an identity
    IDENTITY = "identity"  # clone, alias, contiguous, detach: removed by canonicalize
    TORCH = "torch"  # an ATen op convopt does not model, kept as it is
    FUSED_BLOCK = "fused_block"  # nodes run as one kernel (passes/fuse_blocks.py); its body keeps them


# ---------------------------------------------------------------- attrs


@dataclass(frozen=True)
class NoAttrs:
    pass


@dataclass(frozen=True)
class Conv2dAttrs:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    # Set by the select_lowering pass (the TVM backend's algorithm for this conv; "" = its default) and the
    # cost model's predicted microseconds per candidate lowering, and the measured ones where tuning records
    # decided (tuning/lowering_times.py), shown in IR dumps. Semantics don't change.
    lowering: str = ""
    predicted_us: tuple[tuple[str, float], ...] = ()
    measured_us: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class NormAttrs:
    eps: float = 1e-5


@dataclass(frozen=True)
class LayerNormAttrs:
    normalized_shape: tuple[int, ...]
    eps: float = 1e-5


@dataclass(frozen=True)
class GroupNormAttrs:
    num_groups: int
    eps: float = 1e-5


@dataclass(frozen=True)
class ClampAttrs:
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("clamp needs a lower or an upper bound")


@dataclass(frozen=True)
class GeluAttrs:
    approximate: str = "none"


@dataclass(frozen=True)
class BinaryAttrs:
    """A binary op has two tensor inputs, or one and a Python scalar right operand ``scalar``."""

    scalar: float | None = None


@dataclass(frozen=True)
class MaxPool2dAttrs:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False


@dataclass(frozen=True)
class AvgPool2dAttrs:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None


@dataclass(frozen=True)
class AdaptivePool2dAttrs:
    output_size: tuple[int, int]


@dataclass(frozen=True)
class ReduceAttrs:
    dims: tuple[int, ...]
    keepdim: bool = False


@dataclass(frozen=True)
class DimAttrs:
    dim: int


@dataclass(frozen=True)
class ShapeAttrs:
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PermuteAttrs:
    dims: tuple[int, ...]


@dataclass(frozen=True)
class SplitAttrs:
    sizes: tuple[int, ...]
    dim: int


@dataclass(frozen=True)
class IndexAttrs:
    index: int


@dataclass(frozen=True)
class DropoutAttrs:
    p: float


@dataclass(frozen=True)
class FusedBlockAttrs:
    """A block of nodes run as one kernel. ``body``: the original nodes (``ir.graph.Node``, names, scopes and
    provenance kept) in order; the block's value is the last one's, and its inputs are the values the body
    reads from outside, in order of first use (``body_inputs``). ``kind`` names the kernel that runs it."""

    kind: str
    body: tuple = ()
    predicted_us: tuple[tuple[str, float], ...] = ()  # ("fused", t), ("unfused", t): why it was fused


def body_inputs(body: tuple) -> tuple[str, ...]:
    """The names a fused body reads from outside itself, in order of first use: the fused node's inputs."""
    defined, reads = {n.name for n in body}, []
    for n in body:
        for name in n.inputs:
            if name is not None and name not in defined and name not in reads:
                reads.append(name)
    return tuple(reads)


def run_body(attrs: FusedBlockAttrs, *inputs):
    """Run a fused block's body node by node with ATen (its reference semantics: torch backend, verify)."""
    env = dict(zip(body_inputs(attrs.body), inputs))
    for n in attrs.body:
        fn, args, kwargs = aten_call(n.op, n.attrs, tuple(None if i is None else env[i] for i in n.inputs))
        env[n.name] = fn(*args, **kwargs)
    return env[attrs.body[-1].name]


def _body_runner(attrs: FusedBlockAttrs) -> Callable[..., Any]:
    """``run_body`` for one block, as a named function (torch.fx's code generation names what it calls)."""
    def fused_block(*inputs):
        return run_body(attrs, *inputs)

    return fused_block


@dataclass(frozen=True)
class Ref:
    """In an opaque torch node's arguments: the node's ``index``-th tensor input."""

    index: int


@dataclass(frozen=True)
class TorchAttrs:
    """An ATen op kept as it is: ``target`` like "aten.pixel_shuffle.default", all arguments positional."""

    target: str
    args: tuple[Any, ...]

    def resolve(self) -> Callable[..., Any]:
        namespace, name, overload = self.target.split(".")
        try:
            return getattr(getattr(getattr(torch.ops, namespace), name), overload)
        except AttributeError:
            raise ValueError(f"unknown ATen op {self.target!r}") from None


Attrs = Any  # one of the dataclasses above

# ops that map each element on its own (shape and layout kept): they commute with any transpose
UNARY_ELEMENTWISE = frozenset({Op.RELU, Op.CLAMP, Op.GELU, Op.SILU, Op.SIGMOID, Op.TANH, Op.RSQRT, Op.HARDSWISH,
                               Op.HARDSIGMOID})
BINARY_ELEMENTWISE = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV})
PAD_TARGETS = frozenset({"aten.constant_pad_nd.default", "aten.pad.default"})

# ATen ops kept as they are (Op.TORCH) that compute each element of their output from the same element of
# their one tensor input (other arguments scalars): any storage order of the tensor computes the same
ELEMENTWISE_ATEN = frozenset(f"aten.{name}" for name in (
    "leaky_relu.default", "elu.default", "selu.default", "softplus.default", "mish.default",
    "clamp_min.default", "clamp_max.default", "square.default", "pow.Tensor_Scalar", "reciprocal.default",
    "abs.default", "neg.default", "exp.default", "log.default", "sqrt.default", "sin.default", "cos.default",
    "floor.default", "ceil.default", "round.default", "sign.default", "erf.default",
    "contiguous.default", "clone.default"))


def pad_arguments(attrs: TorchAttrs) -> tuple[tuple[int, ...], str, float]:
    """(ATen's pad list: last dimension first, (before, after) pairs; the mode; the fill value) of a pad node
    (``PAD_TARGETS``): pad.default(input, pad, mode="constant", value=None), constant_pad_nd(input, pad, value=0)."""
    args = attrs.args
    if attrs.target == "aten.constant_pad_nd.default":
        mode, value = "constant", args[2] if len(args) > 2 else 0.0
    else:
        mode, value = (args[2] if len(args) > 2 else "constant"), (args[3] if len(args) > 3 else None)
    return tuple(int(p) for p in args[1]), mode, float(value or 0.0)


def attr_items(attrs: Attrs) -> list[tuple[str, Any]]:
    """The attrs to show: every field without a default, and the others where they differ from it."""
    return [(f.name, getattr(attrs, f.name)) for f in fields(attrs)
            if f.default is MISSING or getattr(attrs, f.name) != f.default]


def split_kwarg_only(fn: Callable[..., Any], args: tuple) -> tuple[tuple, dict]:
    """Split schema-ordered arguments of an ATen op into positional ones and keyword-only ones."""
    schema = getattr(fn, "_schema", None)
    if schema is None:
        return args, {}
    positional, kwargs = [], {}
    for arg, value in zip(schema.arguments, args):
        if arg.kwarg_only:
            kwargs[arg.name] = value
        else:
            positional.append(value)
    return tuple(positional), kwargs


def aten_call(op: "Op", attrs: Attrs, inputs: tuple) -> tuple[Callable[..., Any], tuple, dict]:
    """The ATen call that computes a node: ``fn(*args, **kwargs)``, with ``inputs`` for its tensor inputs."""
    fn, args = OPS[op].to_aten(attrs, inputs)
    return (fn, *split_kwarg_only(fn, args))


# ---------------------------------------------------------------- the op table


@dataclass(frozen=True)
class OpInfo:
    attrs: type
    min_inputs: int
    max_inputs: int | None  # None: variadic
    to_aten: Callable[[Any, tuple], tuple[Callable[..., Any], tuple]]
    optional_inputs: tuple[int, ...] = ()  # input positions that may be None (e.g. conv bias)


def _unary(fn):
    return OpInfo(NoAttrs, 1, 1, lambda a, x: (fn, (x[0],)))


def _binary(fn):
    def to_aten(a: BinaryAttrs, x: tuple):
        return fn, (x[0], a.scalar if a.scalar is not None else x[1])

    return OpInfo(BinaryAttrs, 1, 2, to_aten)


def _torch_args(a: TorchAttrs, inputs: tuple) -> tuple:
    def subst(v):
        if isinstance(v, Ref):
            return inputs[v.index]
        if isinstance(v, tuple):
            return [subst(e) for e in v]
        return v

    return a.resolve(), tuple(subst(v) for v in a.args)


def channel_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """Layer norm over dim 1 of an N,C,H,W tensor: what permute(0,2,3,1) -> layer_norm((C,)) -> permute back
    computes (passes/canonicalize.py writes that chain as one ``channel_norm``)."""
    y = aten.layer_norm.default(aten.permute.default(x, (0, 2, 3, 1)), (x.shape[1],), weight, bias, eps, True)
    return aten.permute.default(y, (0, 3, 1, 2))


OPS: dict[Op, OpInfo] = {
    Op.CONV2D: OpInfo(
        Conv2dAttrs, 2, 3,
        lambda a, x: (aten.conv2d.default,
                      (x[0], x[1], x[2] if len(x) > 2 else None, a.stride, a.padding, a.dilation, a.groups)),
        optional_inputs=(2,),
    ),
    Op.LINEAR: OpInfo(NoAttrs, 2, 3, lambda a, x: (aten.linear.default, (x[0], x[1], x[2] if len(x) > 2 else None)),
                      optional_inputs=(2,)),
    # inputs: x, weight, bias, running_mean, running_var
    Op.BATCH_NORM: OpInfo(
        NormAttrs, 5, 5,
        lambda a, x: (aten.batch_norm.default, (x[0], x[1], x[2], x[3], x[4], False, 0.0, a.eps, True)),
        optional_inputs=(1, 2),
    ),
    Op.LAYER_NORM: OpInfo(
        LayerNormAttrs, 3, 3,
        lambda a, x: (aten.layer_norm.default, (x[0], a.normalized_shape, x[1], x[2], a.eps, True)),
        optional_inputs=(1, 2),
    ),
    Op.CHANNEL_NORM: OpInfo(NormAttrs, 3, 3, lambda a, x: (channel_norm, (x[0], x[1], x[2], a.eps)),
                            optional_inputs=(1, 2)),
    Op.GROUP_NORM: OpInfo(
        GroupNormAttrs, 3, 3,
        lambda a, x: (aten.group_norm.default, (x[0], a.num_groups, x[1], x[2], a.eps, True)),
        optional_inputs=(1, 2),
    ),
    Op.RELU: _unary(aten.relu.default),
    Op.CLAMP: OpInfo(ClampAttrs, 1, 1, lambda a, x: (aten.clamp.default, (x[0], a.min, a.max))),
    Op.GELU: OpInfo(GeluAttrs, 1, 1, lambda a, x: (aten.gelu.default, (x[0], a.approximate))),
    Op.SILU: _unary(aten.silu.default),
    Op.SIGMOID: _unary(aten.sigmoid.default),
    Op.TANH: _unary(aten.tanh.default),
    Op.RSQRT: _unary(aten.rsqrt.default),
    Op.HARDSWISH: _unary(aten.hardswish.default),
    Op.HARDSIGMOID: _unary(aten.hardsigmoid.default),
    Op.ADD: _binary(aten.add.Tensor),
    Op.SUB: _binary(aten.sub.Tensor),
    Op.MUL: _binary(aten.mul.Tensor),
    Op.DIV: _binary(aten.div.Tensor),
    Op.MAX_POOL2D: OpInfo(
        MaxPool2dAttrs, 1, 1,
        lambda a, x: (aten.max_pool2d.default, (x[0], a.kernel_size, a.stride, a.padding, a.dilation, a.ceil_mode)),
    ),
    Op.AVG_POOL2D: OpInfo(
        AvgPool2dAttrs, 1, 1,
        lambda a, x: (aten.avg_pool2d.default,
                      (x[0], a.kernel_size, a.stride, a.padding, a.ceil_mode, a.count_include_pad,
                       a.divisor_override)),
    ),
    Op.ADAPTIVE_AVG_POOL2D: OpInfo(
        AdaptivePool2dAttrs, 1, 1, lambda a, x: (aten.adaptive_avg_pool2d.default, (x[0], a.output_size))
    ),
    Op.MEAN: OpInfo(ReduceAttrs, 1, 1, lambda a, x: (aten.mean.dim, (x[0], a.dims, a.keepdim))),
    Op.SOFTMAX: OpInfo(DimAttrs, 1, 1, lambda a, x: (aten._softmax.default, (x[0], a.dim, False))),
    Op.RESHAPE: OpInfo(ShapeAttrs, 1, 1, lambda a, x: (aten.reshape.default, (x[0], a.shape))),
    Op.PERMUTE: OpInfo(PermuteAttrs, 1, 1, lambda a, x: (aten.permute.default, (x[0], a.dims))),
    Op.CAT: OpInfo(DimAttrs, 1, None, lambda a, x: (aten.cat.default, (list(x), a.dim))),
    Op.SPLIT: OpInfo(SplitAttrs, 1, 1, lambda a, x: (aten.split_with_sizes.default, (x[0], a.sizes, a.dim))),
    Op.GETITEM: OpInfo(IndexAttrs, 1, 1, lambda a, x: (operator.getitem, (x[0], a.index))),
    Op.DROPOUT: OpInfo(DropoutAttrs, 1, 1, lambda a, x: (aten.dropout.default, (x[0], a.p, True))),
    Op.IDENTITY: _unary(aten.clone.default),
    Op.TORCH: OpInfo(TorchAttrs, 0, None, _torch_args),
    Op.FUSED_BLOCK: OpInfo(FusedBlockAttrs, 1, None, lambda a, x: (_body_runner(a), tuple(x))),
}

ATTRS_CLASSES: dict[str, type] = {cls.__name__: cls for cls in {info.attrs for info in OPS.values()}}
