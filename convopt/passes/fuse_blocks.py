"""fuse_blocks: run an inverted residual block as one kernel whose intermediates stay in cache.

    y = [a3](P(a2(D(a1(E(x))))) [+ x])   =>   y = fused_block(x, W_E, b_E, W_D, b_D, W_P, b_P)

and likewise for the other kinds of block match_blocks finds (pointwise MLPs, ConvNeXt and InceptionNeXt
blocks, squeeze-excites, token mixers, dense conv chains: their patterns and preconditions are in
passes/match_blocks.py).
The fused node keeps the original nodes as its body (names, scopes and provenance; the IR dump shows them
indented under it), so the torch backend and verify run the body, and a backend without the fused kernel
can run it unfused. The kernel (schedules/fused_block.py) computes the expanded and depthwise intermediates
a row at a time, in a ring of the rows the depthwise conv reads, which stays in L2.

Decision: a block is fused only where ``predict`` says fused is faster by more than ``margin`` (fused x
margin < unfused; a number, or a function of the block). ``predict`` (a function of the block, e.g. the
cost model's) returns (fused seconds, unfused seconds), recorded on the node (``predicted_us``) so the dump
says why, or None when it can't tell (the block stays unfused).
Without ``predict`` every matched block is fused. ``overrides`` ({module scope or node name: bool}) forces
the choice for the blocks it names (a block is named by any of its nodes, by a module it lies in, or else by
a module inside it).

Where the whole block is not chosen by the prediction, its MLP alone is weighed next, as above, and an
InceptionNeXt block's token mixer alone too, each part on its own. (A name of a module inside a block, e.g.
"stages.0.blocks.1.mlp", forces or refuses the block that holds it: the whole ConvNeXt block, or with False
both it and its MLP alone.)

Two kinds are fused by rule wherever matched (``RULE_KINDS``: one kernel of the same arithmetic where there
were several calls of a few microseconds each; no prediction is asked, ``overrides`` can still refuse them):
the squeeze-excite and the token mixer alone.

``pinned`` (names or module scopes of convs whose lowering the user chose: optimize(lowering={...})) keeps
a block holding one of them unfused unless ``overrides`` forces it: a fused kernel has no per-conv lowering.

``kinds`` limits the kinds matched (CUDA: those schedules/fused_block_cuda.py has a kernel for), ``refuse``
the blocks the target's kernel can't run (CUDA: a bottleneck or ConvNeXt block too wide for shared memory). A name
``overrides`` forces that names no matched block draws a warning (a typo, or a block of a kind the target
can't fuse), not an error: one dict may serve several models.

Runs: the inference pipeline on a TVM CPU target, after the graph passes, before select_lowering (the cost
model decides); on CUDA only when optimize(fuse_blocks={...}) names blocks, which alone are fused.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable

from ..ir.graph import Graph, Node, Origin, unique_name
from ..ir.ops import FusedBlockAttrs, Op, body_inputs
from ..schedules import squeeze_excite, token_mixer
from .match_blocks import Block, alternatives, common_scope, match_blocks

# kinds fused wherever matched, unless ``overrides`` refuse them (no prediction: see their kernels' modules)
RULE_KINDS = frozenset({squeeze_excite.KIND, token_mixer.KIND})


Prediction = Callable[[Graph, Block], "tuple[float, float] | None"]


def _inside(scope: str, key: str) -> bool:
    """Whether module ``scope`` is module ``key`` or lies in it."""
    return scope == key or scope.startswith(key + ".")


def _forced(block: Block, overrides: dict[str, bool]) -> bool | None:
    """The user's choice for ``block``: by the name of any of its nodes, a module scope it lies in, or else
    a module inside it (e.g. a ConvNeXt block's "mlp": the block that holds it)."""
    for n in block.nodes:
        if n.name in overrides:
            return overrides[n.name]
    scope = common_scope(block.nodes)
    for key, value in overrides.items():
        if _inside(scope, key):
            return value
    for key, value in overrides.items():
        if any(_inside(n.scope, key) for n in block.nodes):
            return value
    return None


def _unmatched(blocks: list[Block], overrides: dict[str, bool]) -> list[str]:
    """The names ``overrides`` forces on that name none of ``blocks`` (a typo, or a block of a kind the target
    has no fused kernel for)."""
    used = set()
    for block in blocks:
        used |= {n.name for n in block.nodes if n.name in overrides}
        used |= {key for key in overrides if any(_inside(n.scope, key) for n in block.nodes)}
    return [key for key, value in overrides.items() if value and key not in used]


def fuse_blocks(graph: Graph, *, predict: Prediction | None = None, overrides: dict[str, bool] | None = None,
                margin: float | Callable[[Block], float] = 1.0, kinds: tuple[str, ...] | None = None,
                pinned: frozenset[str] = frozenset(), refuse: Callable[[Block], str | None] | None = None) -> Graph:
    """``graph`` with the blocks that ``predict``, ``margin`` and ``overrides`` choose each made one fused_block
    node (module docstring); ``refuse`` (the target's kernel: why it can't run a block, or None) keeps a block
    chosen or forced unfused, with a warning naming it."""
    overrides = dict(overrides or {})
    matched = [(block, *(part for part in alternatives(graph, block) if kinds is None or part.kind in kinds))
               for block in match_blocks(graph, kinds)]
    everything = [b for choices in matched for b in choices]
    unmatched = _unmatched(everything, overrides)
    if unmatched:  # not an error: one dict may serve several models (a tuning job's)
        warnings.warn(f"fuse_blocks: {', '.join(unmatched)} names no block that can be fused here (blocks: "
                      f"{', '.join(sorted({common_scope(b.nodes) for b in everything})[:12]) or 'none'})",
                      stacklevel=2)
    blocks = {}
    for whole, *parts in matched:
        for block in (whole, *parts):  # the whole block, else each of its parts on its own
            ruled = block.kind in RULE_KINDS
            predicted = predict(graph, block) if predict is not None and not ruled else None
            forced = _forced(block, overrides)
            if forced is None and any(n.op is Op.CONV2D and (n.name in pinned or n.scope in pinned)
                                      for n in block.nodes):
                forced = False
            if forced is None:
                needed = 1.0 if ruled else margin(block) if callable(margin) else margin
                forced = predict is None or ruled or (predicted is not None and predicted[0] * needed < predicted[1])
            reason = refuse(block) if forced and refuse is not None else None
            if reason is not None:  # (its alternatives, parts of it, are weighed next)
                entire = " whole" if block is whole and parts else ""
                warnings.warn(f"fuse_blocks: block {common_scope(block.nodes) or block.nodes[0].name} "
                              f"({block.kind}) is not fused{entire}: {reason}", stacklevel=2)
            elif forced:
                blocks[block.nodes[-1].name] = (block, predicted)
                if block is whole:
                    break
    if not blocks:
        return graph
    fused_away = {n.name for block, _ in blocks.values() for n in block.nodes}
    taken = set(graph.types)
    nodes, renamed = [], {}
    for n in graph.nodes:
        if n.name in blocks:
            block, predicted = blocks[n.name]
            times = () if predicted is None else (("fused", round(predicted[0] * 1e6, 1)),
                                                   ("unfused", round(predicted[1] * 1e6, 1)))
            body = tuple(replace(b, inputs=tuple(renamed.get(i, i) for i in b.inputs)) for b in block.nodes)
            name = unique_name(f"block_{body[0].name}", taken)
            nodes.append(Node(name, Op.FUSED_BLOCK, body_inputs(body), FusedBlockAttrs(block.kind, body, times),
                              body[-1].type, common_scope(body), Origin("fuse_blocks", tuple(b.name for b in body))))
            renamed[n.name] = name
        elif n.name not in fused_away:
            nodes.append(replace(n, inputs=tuple(renamed.get(i, i) for i in n.inputs))
                         if any(i in renamed for i in n.inputs) else n)
    return graph.replace(nodes=tuple(nodes), outputs=tuple(renamed.get(o, o) for o in graph.outputs))
