"""match_blocks: the blocks fuse_blocks may fuse, found on the graph alone (structure, no cost).

The inverted residual block (kind "inverted_residual", schedules/fused_block.py):

    y = [a3](P(a2(D(a1(E(x))))) [+ x])   =>   y = fused_block(x, W_E, b_E, W_D, b_D, W_P, b_P)

with E a 1x1 conv (groups 1, stride 1), a1 and a2 activations a kernel epilogue computes
(schedules/activations.py), D a depthwise k x k conv (k odd, padding k // 2, dilation 1, stride 1 or 2; or
unpadded after a zero pad op of H and W, TF "SAME" padding, asymmetric on even maps: then D's padding with
the pad's is up to k - 1 on each side and the pad is part of the block) and P a 1x1 conv, every weight and bias a constant; the residual add joins when its other operand is x,
and an activation a3 that maps 0 to 0 when it is the only reader of P (or of the add): MobileOne's blocks
after reparameterization, whose every conv ends in a ReLU (left out, it ran as a kernel of its own).
MobileNetV2, MnasNet, EfficientNet-Lite and MobileOne after reparameterization have this block. Where the
projection doesn't directly follow a2 (EfficientNet's and MobileNetV3's squeeze-excite: its global pool
needs the whole depthwise output before the scale), the block is fused up to a2 (kind "expand_depthwise":
one intermediate kept in cache instead of two); the squeeze-excite is a block of its own (below) and the
projection runs as before.

Preconditions, per match: float32 NCHW; every intermediate (E, a1, D, and a2 and P where they are not the
block's value) has exactly one reader, the next op of the block, and is not a graph output (a value seen
elsewhere must be stored); the kernel supports the shapes (``fused_block.supports``). Not matched (left
unfused): an activation the kernels don't have (act(0) != 0), grouped or dilated middle convs.

The pointwise MLP (kind "pointwise_mlp", schedules/fused_mlp.py), the channel MLP of ConvNeXt,
InceptionNeXt, MetaFormer, RepViT and FastViT blocks:

    y = F2(a(F1(x)))  [+ s]              =>   y = fused_block(x, W_1, b_1, W_2, b_2[, s])

with F1 and F2 1x1 convs (groups 1, stride 1, constant weights) on a map of more than one pixel (a
squeeze-excite's convs are matrix-vector products with nothing to keep in cache) and s any value of y's
shape the add reads
(ConvNeXt's block input). Preconditions as above (F1 and a each read only by the next op). Where x is
ConvNeXt's token mixer, a channel norm of a depthwise conv (k x k up to 11, stride 1, same padding, constant
weights), each read only by the next op, the block takes them too (kind "convnext_block"):

    y = F2(a(F1(norm(D(x)))))  [+ s]    =>   y = fused_block(x, W_D, b_D, g, b, W_1, b_1, W_2, b_2[, s])

and likewise InceptionNeXt's token mixer (its BatchNorm already folded into F1): a split of x along the
channels whose parts, in order, reach a cat either as they are or through one depthwise conv each (3x3,
1 x k, k x 1: stride 1, same padding), which is one k x k depthwise conv D' over all channels (each part's
kernel centred in it, a part passed as it is the centre tap 1): y = F2(a(F1(D'(x)))) [+ s], the same kind
without the norm.

Two kinds fuse_blocks fuses by rule wherever matched (its ``RULE_KINDS``):
- the squeeze-excite (kind "squeeze_excite", schedules/squeeze_excite.py): a global average pool of x, a 1x1
  conv, an activation, a 1x1 conv, a gate activation and x times the gate, each read only by the next. Where
  fold_channel_scale will move the gate into the weight of the conv reading x * g, the block ends in the gate
  (the backend's kernel then scales that conv's packed weight);
- the token mixer alone (kind "token_mixer", schedules/token_mixer.py): InceptionNeXt's split, depthwise
  branches and cat as above, with no MLP after it or with its block not fused whole; MixNet's mixed depthwise
  conv at stride 1 is the same pattern.

The dense conv chains (kinds "conv_pair" and "bottleneck", schedules/fused_chain.py), among the nodes the
kinds above left:

    y = act(B(a1(A(x))) [+ s])  or  y = act(P(a2(B(a1(A(x))))) [+ s])
        =>   y = fused_block(x, W_A, b_A, W_B, b_B[, W_P, b_P][, s])

with A, B, P dense convs (groups 1; square odd kernels up to 7x7, same padding, stride 1 or 2; a bottleneck's
A and P 1x1 stride 1), a1 and a2 activations that map 0 to 0, s any value of y's shape (ResNet: the block
input or its downsampled copy), act any epilogue activation or none (ResNet's ReLU after the add, RepVGG's
after its conv). ResNet's basic and bottleneck blocks and RepVGG / VGG chains (paired greedily in graph
order); two 1x1 convs are a pointwise MLP, not a pair. A bottleneck is tried before a pair at each conv.
Inverted residual blocks are matched first, then squeeze-excites, pointwise MLPs, token mixers, then dense
chains; a node belongs to at most one block.

``alternatives`` gives the disjoint parts of a block that fuse_blocks weighs each on its own where the
whole block is not fused: a ConvNeXt block's MLP alone, an InceptionNeXt block's MLP and token mixer.
``describe`` matches a fused node's body again (the backends: which kernel computes it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.ops import PAD_TARGETS, Op, pad_arguments
from ..ir.types import TensorType
from ..schedules.activations import activation_of
from ..schedules.conv_spec import ConvSpec, conv_spec_of
from ..schedules import fused_block, fused_chain, fused_mlp, squeeze_excite
from ..schedules.fused_block import InvertedResidual
from ..schedules.fused_chain import ConvChain
from ..schedules.fused_mlp import PointwiseMLP
from ..schedules.squeeze_excite import SqueezeExcite
from ..schedules.token_mixer import TokenMixer
from .block_layout import is_spatial_mean
from .fold_channel_scale import scale_folds_into_reader

Block = InvertedResidual | PointwiseMLP | ConvChain | SqueezeExcite | TokenMixer


def _pointwise(spec: ConvSpec | None) -> bool:
    return (spec is not None and spec.kernel == (1, 1) and spec.stride == (1, 1) and spec.padding == (0, 0)
            and spec.groups == 1)


def _depthwise(spec: ConvSpec | None, after_pad: bool = False) -> bool:
    """A depthwise conv the fused kernels take: square odd k, dilation 1, stride 1 or 2, padding k // 2; or,
    after a zero pad op (``after_pad``), any padding (fused_block.supports checks its sum with the pad's)."""
    if spec is None or not spec.is_depthwise or spec.out_channels != spec.in_channels:
        return False
    k = spec.kernel[0]
    return (spec.kernel == (k, k) and k % 2 == 1 and (after_pad or spec.padding == (k // 2, k // 2))
            and spec.dilation == (1, 1) and spec.stride in ((1, 1), (2, 2)))


def _constant_operands(graph: Graph, n: Node) -> bool:
    return all(i is None or i in graph.constant_map for i in n.inputs[1:])


def _only_reader(graph: Graph) -> Callable[[Node], "Node | None"]:
    """A function: the one node that reads ``n``, or None (several readers, or ``n`` is a graph output)."""
    users, outputs = graph.users, set(graph.outputs)

    def only_reader(n: Node) -> Node | None:
        readers = users.get(n.name, ())
        return readers[0] if len(readers) == 1 and n.name not in outputs else None

    return only_reader


def _residual_add(graph: Graph, add: Node | None, value: Node, skip: str | None) -> bool:
    """``add`` is value + skip, both of ``value``'s type (no broadcast); ``skip`` None: any other value."""
    if (add is None or add.op is not Op.ADD or add.attrs.scalar is not None or len(add.inputs) != 2
            or add.type != value.type or value.name not in add.inputs):
        return False
    other = add.inputs[1] if add.inputs[0] == value.name else add.inputs[0]
    other_type = graph.types[other]  # its storage layout (block_layout) may differ from the body's
    return (other != value.name and (skip is None or other == skip) and other_type.shape == value.type.shape
            and other_type.dtype == value.type.dtype)


def match_blocks(graph: Graph, kinds: tuple[str, ...] | None = None) -> list[Block]:
    """Every block of ``graph`` that fuse_blocks may fuse (the preconditions above): inverted residuals,
    whole or up to their second activation where the projection doesn't follow it directly (a
    squeeze-excite), then pointwise MLPs among the nodes left, then dense conv chains. ``kinds``: only
    blocks of these kinds (None: all)."""
    found = _inverted_residuals(graph)
    taken = {n.name for block in found for n in block.nodes}
    found += _squeeze_excites(graph, taken)
    taken = {n.name for block in found for n in block.nodes}
    found += _pointwise_mlps(graph, taken, mixers=kinds is None or fused_mlp.MIXER_KIND in kinds)
    taken = {n.name for block in found for n in block.nodes}
    found += _token_mixers(graph, taken)
    taken = {n.name for block in found for n in block.nodes}
    found += _conv_chains(graph, taken)
    return [b for b in found if kinds is None or b.kind in kinds]


def _dense(spec: ConvSpec | None) -> bool:
    return spec is not None and spec.groups == 1


def _conv_chains(graph: Graph, taken: set[str]) -> list[ConvChain]:
    only_reader, found = _only_reader(graph), []

    def follows(node: Node, want) -> Node | None:  # the one reader of node, reading it first, if want(reader)
        nxt = only_reader(node)
        ok = nxt is not None and nxt.inputs[0] == node.name and nxt.name not in taken and want(nxt)
        return nxt if ok else None

    def activation(n: Node) -> bool:
        return activation_of(n) is not None

    def conv(n: Node) -> bool:
        return n.op is Op.CONV2D and _dense(conv_spec_of(graph, n)) and _constant_operands(graph, n)

    for a in graph.nodes:
        if a.name in taken or not conv(a) or getattr(a.type, "dtype", None) != "f32":
            continue
        a1 = follows(a, activation)
        b = follows(a1, conv) if a1 is not None else None
        if b is None:
            continue
        chains = []
        a2 = follows(b, activation)
        p = follows(a2, conv) if a2 is not None else None
        if p is not None:  # a bottleneck (fused_chain.supports checks the 1x1s)
            chains.append(((a, a1, b, a2, p), (activation_of(a1), activation_of(a2))))
        chains.append(((a, a1, b), (activation_of(a1),)))
        for nodes, acts in chains:
            block = _chain_with_epilogue(graph, nodes, acts, follows, only_reader, taken)
            if fused_chain.supports(block) is None:
                found.append(block)
                taken.update(n.name for n in block.nodes)
                break
    return found


def _chain_with_epilogue(graph: Graph, nodes: tuple, acts: tuple, follows, only_reader, taken) -> ConvChain:
    """The chain of ``nodes`` with what follows its last conv: [+ s] [act]."""
    last = nodes[-1]
    add = only_reader(last)
    residual = _residual_add(graph, add, last, None) and add.name not in taken
    if residual:
        nodes = (*nodes, add)
    out = follows(nodes[-1], lambda n: activation_of(n) is not None)
    out_activation = "none"
    if out is not None:
        nodes, out_activation = (*nodes, out), activation_of(out)
    specs = tuple(conv_spec_of(graph, n) for n in nodes if n.op is Op.CONV2D)
    return ConvChain(tuple(nodes), specs, acts, residual, out_activation)


def _mixer(graph: Graph, f1: Node, only_reader, taken: set[str]) -> tuple[Node, Node, ConvSpec] | None:
    """(depthwise conv, channel norm, the conv's spec) of ConvNeXt's token mixer feeding ``f1``, each read only
    by the next op, with constant weights; else None."""
    norm = graph.node_map.get(f1.inputs[0])
    if (norm is None or norm.op is not Op.CHANNEL_NORM or norm.name in taken or only_reader(norm) is not f1
            or not _constant_operands(graph, norm)):
        return None
    dw = graph.node_map.get(norm.inputs[0])
    if dw is None or dw.op is not Op.CONV2D or dw.name in taken or only_reader(dw) is not norm:
        return None
    spec = conv_spec_of(graph, dw)
    if not (_depthwise(spec) and spec.stride == (1, 1) and _constant_operands(graph, dw)):
        return None
    return dw, norm, spec


def _inception_mixer(graph: Graph, cat: Node | None, only_reader, taken: set[str]
                     ) -> tuple[tuple[Node, ...], ConvSpec, int] | None:
    """(its nodes in graph order, the spec of the one depthwise conv that computes it, the taps of that conv
    some branch has: the union of their kernels, centred) of InceptionNeXt's token
    mixer ending in ``cat``: a split of x along the channels whose parts, in order, reach the cat as
    they are or through one depthwise conv each (stride 1, "same" padding, odd kernels, constant operands),
    every part and conv read only by the next op and every part of the split used, at least one conv; else
    None. The convs are one k x k depthwise conv over all channels (k their largest extent, each part's kernel
    centred in it, a part passed as it is the centre tap 1: conv_kernels.mixer_arrays)."""
    if (cat is None or cat.op is not Op.CAT or cat.attrs.dim != 1 or cat.name in taken or len(cat.inputs) < 2
            or getattr(cat.type, "dtype", None) != "f32"):
        return None
    nodes, split, k, footprints = [cat], None, 1, []
    for index, name in enumerate(cat.inputs):
        part = graph.node_map.get(name)
        if part is not None and part.op is Op.CONV2D:
            spec = conv_spec_of(graph, part)
            kh, kw = spec.kernel
            if not (spec.groups == spec.in_channels == spec.out_channels and spec.stride == (1, 1)
                    and spec.dilation == (1, 1) and kh % 2 == 1 and kw % 2 == 1 and spec.padding == (kh // 2, kw // 2)
                    and _constant_operands(graph, part) and part.name not in taken and only_reader(part) is cat):
                return None
            nodes.append(part)
            footprints.append((kh, kw))
            k, reader, part = max(k, kh, kw), part, graph.node_map.get(part.inputs[0])
        else:
            footprints.append((1, 1))
            reader = cat
        if (part is None or part.op is not Op.GETITEM or part.attrs.index != index or part.name in taken
                or only_reader(part) is not reader):
            return None
        nodes.append(part)
        source = graph.node_map.get(part.inputs[0])
        if source is None or source.op is not Op.SPLIT or source.attrs.dim != 1 or (split not in (None, source)):
            return None
        split = source
    if split.name in taken or len(split.attrs.sizes) != len(cat.inputs) or len(graph.users.get(split.name, ())) != len(
            cat.inputs) or split.name in set(graph.outputs) or k == 1:
        return None
    x = graph.types[split.inputs[0]]
    N, C, H, W = x.shape
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    ordered = tuple(sorted([split, *nodes], key=lambda n: position[n.name]))
    taps = {(i - kh // 2, j - kw // 2) for kh, kw in footprints for i in range(kh) for j in range(kw)}
    return ordered, ConvSpec(N, C, H, W, C, (k, k), padding=(k // 2, k // 2), groups=C), len(taps)


def _pointwise_mlps(graph: Graph, taken: set[str], mixers: bool = True) -> list[PointwiseMLP]:
    """Pointwise MLPs among the nodes not ``taken``, each with the token mixer before it where ``mixers`` and
    there is one (ConvNeXt's depthwise conv and norm, kind convnext_block)."""
    only_reader, found = _only_reader(graph), []
    for f1 in graph.nodes:
        if f1.op is not Op.CONV2D or f1.name in taken or getattr(f1.type, "dtype", None) != "f32":
            continue
        act = only_reader(f1)
        f2 = only_reader(act) if act is not None else None
        if (f2 is None or act.inputs[0] != f1.name or activation_of(act) is None or f2.op is not Op.CONV2D
                or f2.inputs[0] != act.name or act.name in taken or f2.name in taken):
            continue
        expand, project = conv_spec_of(graph, f1), conv_spec_of(graph, f2)
        if not (_pointwise(expand) and _pointwise(project) and _constant_operands(graph, f1)
                and _constant_operands(graph, f2)) or expand.height * expand.width == 1:
            continue  # one pixel (a squeeze-excite's convs, a head): matrix-vector products, nothing to keep
        add = only_reader(f2)
        residual = _residual_add(graph, add, f2, None) and add.name not in taken
        nodes = (f1, act, f2, add) if residual else (f1, act, f2)
        block = PointwiseMLP(nodes, expand, project, activation_of(act), residual)
        mixer = _mixer(graph, f1, only_reader, taken) if mixers else None
        cat = graph.node_map.get(f1.inputs[0])
        inception = (_inception_mixer(graph, cat, only_reader, taken)
                     if mixers and mixer is None and cat is not None and only_reader(cat) is f1 else None)
        mixed = None
        if mixer is not None:
            dw, norm, spec = mixer
            mixed = replace(block, nodes=(dw, norm, *nodes), mixer=spec, eps=norm.attrs.eps)
        elif inception is not None:
            mixer_nodes, spec, taps = inception
            mixed = replace(block, nodes=(*mixer_nodes, *nodes), mixer=spec, norm=False, mixer_taps=taps)
        if mixed is not None and fused_mlp.supports(mixed) is None:
            block = mixed
        if fused_mlp.supports(block) is None:
            found.append(block)
            taken.update(n.name for n in block.nodes)
    return found


def _channel_taps(graph: Graph, nodes) -> int:
    """The taps of a token mixer's convs summed over their channels (a part passed as it is: none)."""
    return sum(int(np.prod(graph.types[n.inputs[1]].shape)) for n in nodes if n.op is Op.CONV2D)


def _token_mixers(graph: Graph, taken: set[str]) -> list[TokenMixer]:
    """InceptionNeXt token mixers among the nodes not ``taken`` (``_inception_mixer``), as blocks of their own:
    where no MLP follows, or (``alternatives``) where the whole InceptionNeXt block is not fused."""
    only_reader, found = _only_reader(graph), []
    for cat in graph.nodes:
        inception = _inception_mixer(graph, cat, only_reader, taken) if cat.op is Op.CAT else None
        if inception is not None:
            found.append(TokenMixer(inception[0], inception[1], _channel_taps(graph, inception[0])))
            taken.update(n.name for n in inception[0])
    return found


def _one_pixel_conv(graph: Graph, n: Node | None, reads: Node) -> bool:
    """``n`` is a 1x1 conv of one group over a one-pixel map reading ``reads``, with constant operands."""
    if n is None or n.op is not Op.CONV2D or n.inputs[0] != reads.name or not _constant_operands(graph, n):
        return False
    spec = conv_spec_of(graph, n)
    return _pointwise(spec) and (spec.height, spec.width) == (1, 1)


def _squeeze_excites(graph: Graph, taken: set[str]) -> list[SqueezeExcite]:
    """Squeeze-excites among the nodes not ``taken``: a global average pool of x (a mean over H and W keeping
    them, or an adaptive pool to 1x1), a 1x1 conv, an activation, a 1x1 conv, a gate activation and x times
    the gate, each read only by the next. The multiply is left out of the block (which then ends in the gate)
    where fold_channel_scale will move the gate into the weight of the conv that reads the product, or where
    the gate is the graph's output (a block's body alone: ``describe``)."""
    only_reader, found = _only_reader(graph), []
    for pool in graph.nodes:
        x = pool.inputs[0] if pool.inputs else None
        x_type = graph.types.get(x)
        if (pool.name in taken or not isinstance(pool.type, TensorType) or pool.type.dtype != "f32"
                or not isinstance(x_type, TensorType) or x_type.rank != 4
                or pool.type.shape != (*x_type.shape[:2], 1, 1)):
            continue
        if not ((is_spatial_mean(graph, pool) and pool.attrs.keepdim)
                or (pool.op is Op.ADAPTIVE_AVG_POOL2D and pool.attrs.output_size == (1, 1))):
            continue
        reduce = only_reader(pool)
        act = only_reader(reduce) if _one_pixel_conv(graph, reduce, pool) else None
        expand = only_reader(act) if act is not None and act.inputs[0] == reduce.name else None
        gate = (only_reader(expand) if expand is not None and activation_of(act) and _one_pixel_conv(graph, expand, act)
                else None)
        if gate is None or gate.inputs[0] != expand.name or not activation_of(gate) or gate.type.shape != pool.type.shape:
            continue
        mul = only_reader(gate)
        if mul is not None and (mul.op is not Op.MUL or mul.attrs.scalar is not None
                                or sorted(mul.inputs) != sorted((x, gate.name)) or mul.type.shape != x_type.shape):
            continue
        if mul is None and (gate.name not in graph.outputs or graph.users.get(gate.name)):
            continue  # the gate read elsewhere too
        nodes = (pool, reduce, act, expand, gate) + ((mul,) if mul is not None else ())
        if any(n.name in taken for n in nodes):
            continue
        if mul is not None and scale_folds_into_reader(graph, mul):
            nodes = nodes[:-1]
        block = SqueezeExcite(nodes, conv_spec_of(graph, reduce), conv_spec_of(graph, expand), *x_type.shape[2:],
                              activation_of(act), activation_of(gate), nodes[-1] is mul)
        if squeeze_excite.supports(block) is None:
            found.append(block)
            taken.update(n.name for n in block.nodes)
    return found


def _zero_pad(n: Node) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a constant zero pad of H and W (TF "SAME" padding before a strided conv),
    else None."""
    if n.op is not Op.TORCH or n.attrs.target not in PAD_TARGETS:
        return None
    pad, mode, value = pad_arguments(n.attrs)
    if mode != "constant" or value != 0.0 or len(pad) > 4 or min(pad, default=0) < 0:
        return None
    left, right, top, bottom = (*pad, 0, 0, 0, 0)[:4]
    return top, left, bottom, right


def _inverted_residuals(graph: Graph) -> list[InvertedResidual]:
    only_reader = _only_reader(graph)
    found, taken = [], set()
    for e in graph.nodes:
        if e.op is not Op.CONV2D or e.name in taken or getattr(e.type, "dtype", None) != "f32":
            continue
        chain, pre_pad = [e], None
        for want in ("act", "dw", "act"):
            nxt = only_reader(chain[-1])
            if want == "dw" and nxt is not None and nxt.inputs[0] == chain[-1].name and _zero_pad(nxt) is not None:
                chain.append(nxt)  # TF "SAME" padding: a pad op, then an unpadded conv
                pre_pad, nxt = _zero_pad(nxt), only_reader(nxt)
            if nxt is None or nxt.inputs[0] != chain[-1].name:
                break
            if (activation_of(nxt) is None) if want == "act" else (nxt.op is not Op.CONV2D):
                break
            chain.append(nxt)
        if len(chain) != 4 + (pre_pad is not None):
            continue
        a1, dw, a2 = chain[1], chain[-2], chain[-1]
        expand, depthwise = conv_spec_of(graph, e), conv_spec_of(graph, dw)
        if not (_pointwise(expand) and _depthwise(depthwise, after_pad=pre_pad is not None)
                and all(_constant_operands(graph, conv) for conv in (e, dw))):
            continue
        acts = (activation_of(a1), activation_of(a2))
        pre_pad = pre_pad or (0, 0, 0, 0)
        block = InvertedResidual(tuple(chain), expand, depthwise, None, acts, False, pre_pad)  # up to a2: partial
        project = only_reader(a2)
        if (project is not None and project.op is Op.CONV2D and project.inputs[0] == a2.name
                and _pointwise(conv_spec_of(graph, project)) and _constant_operands(graph, project)):
            add = only_reader(project)
            residual = _residual_add(graph, add, project, e.inputs[0])
            nodes = (*chain, project, add) if residual else (*chain, project)
            after = only_reader(nodes[-1])  # an activation the kernel's epilogue applies (maps 0 to 0)
            a3 = activation_of(after) if after is not None and after.inputs[0] == nodes[-1].name else None
            if a3 is not None and a3.partition(":")[0] in fused_block.SUPPORTED_ACTIVATIONS:
                nodes = (*nodes, after)
            else:
                a3 = "none"
            block = InvertedResidual(nodes, expand, depthwise, conv_spec_of(graph, project), acts, residual, pre_pad,
                                     a3)
        if fused_block.supports(block) is None:
            found.append(block)
            taken.update(n.name for n in block.nodes)
    return found


def common_scope(body) -> str:
    """The module the block's nodes share (e.g. "blocks.1.0" for "blocks.1.0.conv_pw", "blocks.1.0.conv_dw"),
    else the first node's."""
    paths = [n.scope.split(".") for n in body if n.scope]
    if not paths:
        return ""
    common = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common or paths[0])


def describe(graph: Graph, fused: Node) -> Block:
    """The block a fused_block node of ``graph`` computes (its body matched again)."""
    body, types, constants = fused.attrs.body, graph.types, graph.constant_map
    inputs = tuple(Value(name, types[name]) for name in fused.inputs if name not in constants)
    (block,) = match_blocks(graph.replace(inputs=inputs, nodes=body, outputs=(body[-1].name,)))
    return block


def alternatives(graph: Graph, block: Block) -> tuple[Block, ...]:
    """Disjoint parts of ``block`` fuse_blocks weighs each on its own where ``block`` is not fused: a ConvNeXt
    block's MLP alone (its depthwise conv and norm then run as before), and an InceptionNeXt block's token mixer
    alone; none for the other kinds."""
    if isinstance(block, PointwiseMLP) and block.mixer is not None:  # its nodes from f1 on: f1, act, f2[, add]
        mlp = len(block.nodes) - (4 if block.residual else 3)
        parts = (replace(block, nodes=block.nodes[mlp:], mixer=None, eps=0.0, norm=True, mixer_taps=0),)
        if not block.norm:  # InceptionNeXt: the mixer's nodes are the ones before the MLP's
            parts += (TokenMixer(block.nodes[:mlp], block.mixer, _channel_taps(graph, block.nodes[:mlp])),)
        return parts
    return ()
