"""select_lowering: choose each convolution's algorithm (its lowering) for the TVM CPU backend.

For every conv2d node n with fp32 data and a constant weight (the convs the backend compiles with its
own kernels), with s = the conv's shape and L(s) the lowerings that can run s:

    lowering(n) = override(n)                          if the user forced one for n (by node or module name)
                = argmin_{l in L(s)} t_hat(l, s)       otherwise, t_hat the cost model (convopt/cost)

and the node's attrs record the choice and t_hat of every candidate (``predicted_us``), so the IR dump
shows why. The graph's semantics don't change: only the backend reads these attrs.

Preconditions: the graph's conv shapes are final (run after the folding and merging passes).
Runs last in the inference pipeline when the target is a TVM CPU target (pipeline.build adds it with the
target's SIMD width and its machine profile); ``overrides`` maps node names or module scopes to a lowering
name, ``default`` forces one lowering on every conv that it can run.
"""

from __future__ import annotations

from dataclasses import replace

from ..cost.model import predict_all
from ..cost.profile import MachineProfile
from ..ir.graph import Graph
from ..ir.ops import Op
from ..schedules.conv_spec import conv_spec_of
from ..schedules.lowerings import LOWERINGS, LoweringError, lowering


def _check_names(graph: Graph, overrides: dict[str, str]) -> None:
    convs = [n for n in graph.nodes if n.op is Op.CONV2D]
    known = {n.name for n in convs} | {n.scope for n in convs if n.scope}
    for key, name in overrides.items():
        if name not in LOWERINGS:
            raise LoweringError(f"lowering override {key!r}: unknown lowering {name!r}; "
                                f"convopt has: {', '.join(LOWERINGS)}")
        if key not in known:
            sample = ", ".join(sorted(known)[:8])
            raise LoweringError(f"lowering override {key!r}: no conv node or module of that name "
                                f"(conv layers include: {sample})")


def select_lowering(graph: Graph, *, profile: MachineProfile, lanes: int,
                    overrides: dict[str, str] | None = None, default: str | None = None) -> Graph:
    overrides = dict(overrides or {})
    _check_names(graph, overrides)
    if default is not None and default not in LOWERINGS:
        raise LoweringError(f"unknown lowering {default!r}; convopt has: {', '.join(LOWERINGS)}")
    nodes = []
    for n in graph.nodes:
        spec = conv_spec_of(graph, n)
        if spec is None:
            nodes.append(n)
            continue
        predicted = predict_all(spec, profile, lanes)
        forced = overrides.get(n.name) or overrides.get(n.scope or "")
        if forced is not None:
            reason = lowering(forced).supports(spec)
            if reason is not None:
                raise LoweringError(f"lowering override for %{n.name} ({n.scope or 'no module'}, "
                                    f"{spec.describe()}): {forced} can't run it: {reason}")
            choice = forced
        elif default is not None and lowering(default).supports(spec) is None:
            choice = default
        else:
            choice = min(predicted, key=predicted.get) if predicted else "direct"
        times = tuple((name, float(f"{seconds * 1e6:.4g}")) for name, seconds in predicted.items())
        nodes.append(replace(n, attrs=replace(n.attrs, lowering=choice, predicted_us=times)))
    return graph.replace(nodes=tuple(nodes))
