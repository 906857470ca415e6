"""Structural reparameterization from the graph alone: linear branches over one input become one conv.

Every value that is an affine function of one source tensor ``x`` is tracked as a conv of ``x``,
``v = conv(x, W, b; stride, padding, dilation, groups)``, and the algebra below combines them:

    identity            x                    => W = 1 (depthwise 1x1), b = 0
    per-channel affine  v * s + t            => W * s[o], b * s + t      (BatchNorm, mul/add by a constant)
    average pool        avg_pool_k(v)        => depthwise k x k conv, W = 1 / k^2   (count_include_pad or no pad)
    sum                 v1 +/- v2            => W1 +/- W2, b1 +/- b2     after bringing both to
                        the common groups gcd(g1, g2) (a grouped kernel is a block of a coarser one) and
                        a common kernel (each centred, dilated taps placed on the common grid: UniRepLKNet)
    sequence            conv2(conv1(x))      => one conv when conv1 or conv2 is pointwise (1x1, no padding,
                        conv1 with stride 1): W[o, i] = sum_m W2[o, m] W1[m, i] (DBB's 1x1 -> kxk)

Preconditions for each step, checked not assumed: weights and affine factors are constants; every
branch value other than the source has exactly one reader (a value read elsewhere stays as it is);
summed branches have the same source, stride and output type and their windows share one centre
(``d * (k - 1) - 2 * p`` equal per dimension); a padded conv after a pointwise one needs the inner
bias to be zero (padding zeros are not the bias); nonlinear ops end a branch. A step is taken only if
the merged conv costs no more multiply-adds than the ops it replaces (so depthwise + pointwise is
never turned into a dense kxk conv).

A value is rewritten when its expression absorbed a conv and at least one more op, and no reader
absorbed it in turn. This covers RepVGG (3x3 + 1x1 + identity BN), ACNet (3x3 + 1x3 + 3x1), DBB,
MobileOne (k parallel convs + scale branch + identity), RepGhost, RepViT, FastViT's RepMixer
(x + gamma * (mixer(x) - bn(x))) and UniRepLKNet's dilated branches with no per-family code.
Runs in the inference pipeline after fold_conv_bn (which merges each branch's own BN first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..ir.graph import Graph, GraphEditor, Node
from ..ir.ops import Conv2dAttrs, Op
from ..ir.types import TensorType
from .eliminate_dead_code import eliminate_dead_code
from .fold_conv_bn import scale_shift_of_bn


@dataclass(frozen=True)
class Affine:
    """``conv(source, weight, bias, stride, padding, dilation, groups)`` in float64, with the ops it stands for."""

    source: str
    weight: torch.Tensor  # (Cout, Cin / groups, kh, kw)
    bias: torch.Tensor  # (Cout,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    nodes: tuple[str, ...]  # the IR nodes this expression replaces
    convs: int  # how many of them are convolutions
    cost: float  # multiply-adds of those nodes

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])

    def macs(self, out_pixels: int) -> float:
        return float(self.weight.numel() * out_pixels)

    def is_pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.padding == (0, 0)


def _pixels(t: TensorType) -> int:
    return t.shape[0] * t.shape[2] * t.shape[3]


def identity(source: str, channels: int) -> Affine:
    return Affine(source, torch.ones(channels, 1, 1, 1, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64),
                  (1, 1), (0, 0), (1, 1), channels, (), 0, 0.0)


def scale_shift(a: Affine, scale: torch.Tensor, shift: torch.Tensor, node: Node) -> Affine:
    """a * scale + shift per output channel (scale, shift broadcast to (Cout,))."""
    cout = a.weight.shape[0]
    scale, shift = scale.expand(cout), shift.expand(cout)
    return replace(a, weight=a.weight * scale[:, None, None, None], bias=a.bias * scale + shift,
                   nodes=a.nodes + (node.name,), cost=a.cost + node.type.numel)


def regroup(w: torch.Tensor, groups: int, to_groups: int) -> torch.Tensor:
    """The same conv with ``to_groups`` groups (a divisor of ``groups``): a block-diagonal kernel."""
    if groups == to_groups:
        return w
    cout, cin_g = w.shape[:2]
    cin = cin_g * groups
    out = w.new_zeros(cout, cin // to_groups, *w.shape[2:])
    o = torch.arange(cout)
    start = (o // (cout // groups)) * cin_g - (o // (cout // to_groups)) * (cin // to_groups)
    cols = start[:, None] + torch.arange(cin_g)[None, :]
    out[o[:, None], cols] = w
    return out


def _common_grid(parts: list[Affine]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """Kernel size, dilation and padding of a conv whose window holds every part's taps, or None."""
    kernel, dilation, padding = [], [], []
    for dim in (0, 1):
        spans = [a.dilation[dim] * (a.kernel[dim] - 1) for a in parts]
        if len({s - 2 * a.padding[dim] for s, a in zip(spans, parts)}) != 1:
            return None  # windows not centred alike
        span = max(spans)
        d = math.gcd(*[a.dilation[dim] for a in parts if a.kernel[dim] > 1] or [1])
        if any((span - s) % 2 or ((span - s) // 2) % d for s in spans):
            d = 1
        if any((span - s) % 2 for s in spans):
            return None
        kernel.append(span // d + 1)
        dilation.append(d)
        padding.append(parts[spans.index(span)].padding[dim])
    return tuple(kernel), tuple(dilation), tuple(padding)


def _place(a: Affine, groups: int, kernel, dilation) -> torch.Tensor:
    w = regroup(a.weight, a.groups, groups)
    out = w.new_zeros(*w.shape[:2], *kernel)
    rows = [((kernel[d] - 1) * dilation[d] - a.dilation[d] * (a.kernel[d] - 1)) // 2 for d in (0, 1)]
    hi = torch.arange(a.kernel[0]) * a.dilation[0] // dilation[0] + rows[0] // dilation[0]
    wi = torch.arange(a.kernel[1]) * a.dilation[1] // dilation[1] + rows[1] // dilation[1]
    out[:, :, hi[:, None], wi[None, :]] = w
    return out


def add(a: Affine, b: Affine, sign: float, node: Node) -> Affine | None:
    if a.source != b.source or a.stride != b.stride or a.weight.shape[0] != b.weight.shape[0]:
        return None
    grid = _common_grid([a, b])
    if grid is None:
        return None
    kernel, dilation, padding = grid
    groups = math.gcd(a.groups, b.groups)
    weight = _place(a, groups, kernel, dilation) + sign * _place(b, groups, kernel, dilation)
    return Affine(a.source, weight, a.bias + sign * b.bias, a.stride, padding, dilation, groups,
                  a.nodes + b.nodes + (node.name,), a.convs + b.convs, a.cost + b.cost + node.type.numel)


def compose(inner: Affine, outer: Affine, node: Node) -> Affine | None:
    """outer(inner(x)) as one conv, where ``outer`` is an Affine over inner's value."""
    groups = math.gcd(inner.groups, outer.groups)
    w1, w2 = regroup(inner.weight, inner.groups, groups), regroup(outer.weight, outer.groups, groups)
    cout, mid_g = w2.shape[:2]
    mid = w1.shape[0]
    if mid != mid_g * groups:
        return None
    # per group: W[o, i] = sum_m W2[o, m] * W1[m, i]
    w1g = w1.reshape(groups, mid // groups, *w1.shape[1:])
    w2g = w2.reshape(groups, cout // groups, *w2.shape[1:])
    if outer.is_pointwise():  # 1x1 after anything: strides multiply
        weight = torch.einsum("gom,gmikl->goikl", w2g[..., 0, 0], w1g)
        bias = outer.bias + (w2[..., 0, 0].reshape(groups, cout // groups, -1) @
                             inner.bias.reshape(groups, -1, 1)).reshape(-1)
        stride = (inner.stride[0] * outer.stride[0], inner.stride[1] * outer.stride[1])
        attrs = (stride, inner.padding, inner.dilation)
    elif inner.is_pointwise() and inner.stride == (1, 1):  # kxk after 1x1: padding must see zeros
        if outer.padding != (0, 0) and bool(inner.bias.any()):
            return None
        weight = torch.einsum("gomkl,gmi->goikl", w2g, w1g[..., 0, 0])
        bias = outer.bias + (w2.sum(dim=(2, 3)).reshape(groups, cout // groups, -1) @
                             inner.bias.reshape(groups, -1, 1)).reshape(-1)
        attrs = (outer.stride, outer.padding, outer.dilation)
    else:
        return None
    return Affine(inner.source, weight.reshape(cout, -1, *weight.shape[3:]), bias, *attrs, groups,
                  inner.nodes + outer.nodes, inner.convs + outer.convs, inner.cost + outer.cost)


# ---------------------------------------------------------------- the traversal


class _Walk:
    """Finds, for each value, its largest expression as a conv of one source (structure only, no cost)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.affine: dict[str, Affine] = {}
        self.children: dict[str, tuple[str, ...]] = {}  # the values whose expressions a node's absorbed
        self._used: list[str] = []

    def constant(self, name: str | None) -> torch.Tensor | None:
        c = self.graph.constant_map.get(name) if name is not None else None
        if c is None or c.data is None or not c.data.is_floating_point():
            return None
        return c.data.double()

    def channels(self, name: str) -> int | None:
        t = self.graph.types[name]
        return t.shape[1] if isinstance(t, TensorType) and t.rank == 4 else None

    def absorbable(self, name: str) -> Affine | None:
        """The expression of a value that only one op reads (else the value must stay as it is)."""
        return self.affine.get(name) if self.graph.num_uses(name) == 1 else None

    def absorb(self, name: str, expr: Affine) -> Affine:
        self._used.append(name)
        return expr

    def expression(self, name: str) -> Affine | None:
        found = self.absorbable(name)
        if found is not None:
            return self.absorb(name, found)
        channels = self.channels(name)
        return identity(name, channels) if channels is not None else None

    def per_channel(self, name: str | None, channels: int) -> torch.Tensor | None:
        """A constant that broadcasts over (N, C, H, W) per channel only: scalar, (C,1,1) or (1,C,1,1)."""
        t = self.constant(name)
        if t is None:
            return None
        if t.numel() == 1 and t.dim() <= 4:
            return t.reshape(1)
        shape = tuple(t.shape)
        if shape in ((channels, 1, 1), (1, channels, 1, 1)):
            return t.reshape(channels)
        return None

    # -- one method per op kind; each returns the node's expression or None
    def conv(self, n: Node) -> Affine | None:
        weight = self.constant(n.inputs[1])
        bias = self.constant(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        if weight is None or (bias is None and len(n.inputs) > 2 and n.inputs[2] is not None):
            return None
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        a = n.attrs
        base = Affine(n.inputs[0], weight, bias, a.stride, a.padding, a.dilation, a.groups, (n.name,), 1,
                      float(weight.numel() * _pixels(n.type)))
        return self.after(n.inputs[0], base, n)

    def after(self, source: str, outer: Affine, n: Node) -> Affine:
        """``outer`` applied to ``source``'s value: composed with source's expression where that pays."""
        inner = self.absorbable(source)
        if inner is not None:
            merged = compose(inner, outer, n)
            if merged is not None:
                return self.absorb(source, merged)
        return outer

    def avg_pool(self, n: Node) -> Affine | None:
        a, channels = n.attrs, self.channels(n.inputs[0])
        if channels is None or a.ceil_mode or a.divisor_override is not None:
            return None
        if a.padding != (0, 0) and not a.count_include_pad:
            return None
        kh, kw = a.kernel_size
        weight = torch.full((channels, 1, kh, kw), 1.0 / (kh * kw), dtype=torch.float64)
        pool = Affine(n.inputs[0], weight, weight.new_zeros(channels), a.stride, a.padding, (1, 1), channels,
                      (n.name,), 0, float(weight.numel() * _pixels(n.type)))
        return self.after(n.inputs[0], pool, n)

    def batch_norm(self, n: Node) -> Affine | None:
        values = [self.constant(i) if i is not None else None for i in n.inputs[1:]]
        gamma, beta, mean, var = values
        if mean is None or var is None or (n.inputs[1] and gamma is None) or (n.inputs[2] and beta is None):
            return None
        scale, shift = scale_shift_of_bn(gamma, beta, mean, var, n.attrs.eps)
        inner = self.expression(n.inputs[0])
        return scale_shift(inner, scale, shift, n) if inner is not None else None

    def binary(self, n: Node) -> Affine | None:
        channels = self.channels(n.name) if isinstance(n.type, TensorType) else None
        if channels is None:
            return None
        if n.attrs.scalar is not None:
            x, factor = n.inputs[0], torch.tensor([float(n.attrs.scalar)], dtype=torch.float64)
        else:
            x, other = n.inputs
            factor = self.per_channel(other, channels)
            if factor is None and n.op in (Op.ADD, Op.MUL):
                x, factor = other, self.per_channel(x, channels)
            if factor is None:
                return self.sum(n) if n.op in (Op.ADD, Op.SUB) else None
        if self.graph.types[x] != n.type:
            return None
        inner = self.expression(x)
        if inner is None:
            return None
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        if n.op is Op.MUL:
            return scale_shift(inner, factor, zero, n)
        if n.op is Op.DIV:
            return scale_shift(inner, 1.0 / factor, zero, n)
        if n.op is Op.SUB and x != n.inputs[0]:
            return None  # c - x: not written this way by capture
        return scale_shift(inner, one, factor if n.op is Op.ADD else -factor, n)

    def sum(self, n: Node) -> Affine | None:
        a, b = n.inputs
        if self.graph.types[a] != n.type or self.graph.types[b] != n.type:
            return None
        sign = 1.0 if n.op is Op.ADD else -1.0
        ea, eb = self.absorbable(a), self.absorbable(b)
        ia = identity(a, n.type.shape[1])
        ib = identity(b, n.type.shape[1])
        for left, right, used in ((ea, eb, (a, b)), (ia, eb, (b,)), (ea, ib, (a,))):
            if left is None or right is None or left.source != right.source:
                continue
            merged = add(left, right, sign, n)
            if merged is not None:
                self._used.extend(used)
            return merged
        return None

    def visit(self, n: Node) -> None:
        self._used = []
        kind = {Op.CONV2D: self.conv, Op.BATCH_NORM: self.batch_norm, Op.ADD: self.binary, Op.SUB: self.binary,
                Op.MUL: self.binary, Op.DIV: self.binary, Op.AVG_POOL2D: self.avg_pool}.get(n.op)
        found = kind(n) if kind is not None else None
        if found is not None:
            self.affine[n.name] = found
            self.children[n.name] = tuple(self._used)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _worth_it(walk: _Walk, name: str) -> Affine | None:
    """The expression at ``name`` if it merged a conv with more, costs no more multiply-adds than the ops
    it replaces, and has exactly the value's shape (never emit a conv that differs from the value)."""
    a, node = walk.affine[name], walk.graph.node_map[name]
    if a.convs < 1 or len(a.nodes) < 2 or a.macs(_pixels(node.type)) > a.cost:
        return None
    src = walk.graph.types[a.source]
    expected = (src.shape[0], a.weight.shape[0],
                *(_out_size(src.shape[2 + d], a.kernel[d], a.stride[d], a.padding[d], a.dilation[d]) for d in (0, 1)))
    if expected != node.type.shape or a.weight.shape[1] * a.groups != src.shape[1]:
        return None
    return a


def _choose(walk: _Walk) -> dict[str, Affine]:
    """Top down from the largest expressions: take one if it is worth it, else try the ones it absorbed."""
    absorbed = {c for children in walk.children.values() for c in children}
    chosen: dict[str, Affine] = {}
    pending = [name for name in walk.affine if name not in absorbed]
    while pending:
        name = pending.pop()
        a = _worth_it(walk, name)
        if a is not None:
            chosen[name] = a
        else:
            pending.extend(walk.children[name])
    return chosen


def merge_branches(graph: Graph) -> Graph:
    walk = _Walk(graph)
    for n in graph.nodes:
        walk.visit(n)
    chosen = _choose(walk)
    if not chosen:
        return graph
    editor = GraphEditor(graph, "merge_branches")
    for n in graph.nodes:
        a = chosen.get(n.name)
        if a is None:
            editor.keep(n)
            continue
        dtype = n.type.torch_dtype
        prefix = f"{n.scope}." if n.scope else f"{n.name}."
        w = editor.add_constant(f"{prefix}reparam_weight", a.weight.to(dtype).contiguous())
        b = editor.add_constant(f"{prefix}reparam_bias", a.bias.to(dtype).contiguous())
        sources = [graph.node_map[name] for name in a.nodes]
        conv = editor.emit(Op.CONV2D, (a.source, w, b), Conv2dAttrs(a.stride, a.padding, a.dilation, a.groups),
                           n.type, base="conv2d", sources=sources, scope=n.scope)
        editor.replace_uses(n.name, conv)
    return eliminate_dead_code(editor.finish())
