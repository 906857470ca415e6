"""select_lowering: choose each convolution's algorithm (its lowering) for the TVM CPU backend.

For every conv2d node n with fp32 data and a constant weight (the convs the backend compiles with its
own kernels), with s = the conv's shape and L(s) the lowerings that can run s:

    lowering(n) = override(n)                          if the user forced one for n (by node or module name)
                = default                               if the user forced one on every conv it runs
                = gemv                                  if s is a 1x1 conv over a one-pixel map (a rule:
                                                        schedules/gemv.py; no prediction is made)
                = argmin_{l in N(s)} t(l, s, b(n))      if every l in N(s) was measured on s (tuning records)
                = argmin_{l in L(s)} t_hat(l, s, b(n))  otherwise, t_hat the cost model (convopt/cost)

with N(s) = {l in L(s) : t_hat(l, s, b(n)) <= MEASURE_MARGIN * min t_hat}, the lowerings a tuning job
measures (cost/model.near_best), joined by any other lowering of L(s) that was measured too (a job given a
wider margin), and t the measured time of l's fastest tuned kernel on s in the layout it would run in, plus
the predicted relayout where it can't run blocked, or of its output alone where only that is blocked
(cost/model.measured_all)

Weights from memory: t_hat and t describe a kernel timed alone, its weights cached from call to call. When
the packed weights of the lowerings so chosen add up to more than the last-level cache (sum_n weights(l(n),
s(n)) > L3), every conv reads them from memory on every run of the model, so the choice is made again with
t_hat(l, s) + weights(l, s) / B and t(l, s) + weights(l, s) / B (cost/model.py: weight_stream_seconds), B the
rate at which conv kernels were measured to read weights from memory (cost/weight_stream.py; a copy's
bandwidth where not measured): Winograd's transformed weights are 1.8x (F(2,3)) and 4x (F(4,3)) the conv's
own. On the AMD Zen 5 here (L3 32 MB) repvgg_a0's thirteen 192->192 3x3 convs at 14x14 ran F(4,3) at 250-340
us each in the model against 125-140 us alone; at the copy's 89 GB/s the measured F(4,3) (136 us + 60) still
beat F(2,3) (175 + 27), at the measured 56 GB/s F(2,3) wins (175 + 42 against 136 + 94), and the model runs
4.2 ms instead of 5.3.

where b(n) says whether n sits between blocked neighbours: its input and its output would be stored in
channel blocks (NCHW[lanes]c, passes/block_layout.py) if every conv ran a lowering that works on blocked
tensors. There the cost model predicts the lowerings that do with their blocked coefficients, and charges
the others for the layout change they force (cost/model.py); a conv whose input is NCHW but whose output
would be blocked (e.g. a stem, reading the graph's input) charges the lowerings that can't write blocked
tensors for its output's layout change (on Zen 5, alone, mobilenetv2_100's 3->32 stem ran im2col at 99 us,
its NCHW output then relaid by its reader, against direct's 69-80 us writing blocked; docs/lowerings.md); ``blocked_layouts=False`` (when the
block_layout pass doesn't run) predicts NCHW everywhere. The node's attrs record the choice and t_hat of
every candidate (``predicted_us``; a name ends in "@blocked" where b(n) held) and, where measurements decided,
the measured ones (``measured_us``), so the IR dump shows why.
The graph's semantics don't change: only the backend reads these attrs.

Preconditions: the graph's conv shapes are final (run after the folding and merging passes).
Runs after the graph passes and before block_layout in the inference pipeline when the target is a TVM
CPU target (pipeline.build adds it with the target's SIMD width and its machine profile); ``overrides``
maps node names or module scopes to a lowering name, ``default`` forces one lowering on every conv that it
can run; ``avoid`` names lowerings never chosen unless forced (optimize() retries a model whose check
failed with Winograd's fp32 rounding without it). ``measured`` maps ConvSpec.key() to {variant: {epilogue: seconds}} (tuning/lowering_times.py reads it
from the tuning records); None or empty: predictions alone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from ..cost.model import BLOCKED, measured_all, near_best, packed_weight_bytes, predict_all, works_blocked
from ..cost.profile import MachineProfile
from ..ir.graph import Graph
from ..ir.ops import Op
from ..schedules.conv_spec import conv_spec_of
from ..schedules.lowerings import ALL_LOWERINGS, LOWERINGS, RULE_LOWERINGS, LoweringError, lowering
from .block_layout import blocked_values


def _check_names(graph: Graph, overrides: dict[str, str]) -> None:
    convs = [n for n in graph.nodes if n.op is Op.CONV2D]
    known = {n.name for n in convs} | {n.scope for n in convs if n.scope}
    for key, name in overrides.items():
        if name not in ALL_LOWERINGS:
            raise LoweringError(f"lowering override {key!r}: unknown lowering {name!r}; "
                                f"convopt has: {', '.join(ALL_LOWERINGS)}")
        if key not in known:
            fused = next((n for n in graph.nodes if n.op is Op.FUSED_BLOCK and any(
                b.op is Op.CONV2D and key in (b.name, b.scope) for b in n.attrs.body)), None)
            if fused is not None:  # fuse_blocks leaves a pinned conv unfused unless its block was forced
                raise LoweringError(f"lowering override {key!r}: that conv runs inside fused block %{fused.name} "
                                    f"({fused.attrs.kind}, forced by fuse_blocks=), whose kernel has no per-conv "
                                    f"lowering; drop one of the two")
            sample = ", ".join(sorted(known)[:8])
            raise LoweringError(f"lowering override {key!r}: no conv node or module of that name "
                                f"(conv layers include: {sample})")


def _could_run_blocked(graph: Graph, lanes: int, profile: MachineProfile):
    """Whether a conv has a calibrated lowering that runs on blocked tensors."""
    def could(n) -> bool:
        spec = conv_spec_of(graph, n)
        return spec is not None and any(
            lowering(name).supports(spec) is None and works_blocked(name, spec, lanes)
            for name in LOWERINGS if name in profile.coefficients)

    return could


def select_lowering(graph: Graph, *, profile: MachineProfile, lanes: int,
                    overrides: dict[str, str] | None = None, default: str | None = None,
                    blocked_layouts: bool = True, measured: Mapping[str, Mapping[str, float]] | None = None,
                    avoid: frozenset[str] = frozenset()) -> Graph:
    overrides = dict(overrides or {})
    _check_names(graph, overrides)
    if default is not None and default not in ALL_LOWERINGS:
        raise LoweringError(f"unknown lowering {default!r}; convopt has: {', '.join(ALL_LOWERINGS)}")
    context = blocked_values(graph, lanes, _could_run_blocked(graph, lanes, profile)) if blocked_layouts else set()
    chosen = _choose(graph, profile, lanes, overrides, default, context, measured, avoid, weights_stream=False)
    if _packed_weight_bytes(chosen, lanes) > profile.caches.get("L3", float("inf")):
        chosen = _choose(graph, profile, lanes, overrides, default, context, measured, avoid, weights_stream=True)
    return chosen


def _packed_weight_bytes(graph: Graph, lanes: int) -> float:
    """Bytes of the packed weights of every conv that has a lowering chosen by prediction or measurement."""
    total = 0.0
    for n in graph.nodes:
        spec = conv_spec_of(graph, n)
        if spec is not None and getattr(n.attrs, "lowering", None) in LOWERINGS:
            total += packed_weight_bytes(n.attrs.lowering, spec, lanes)
    return total


def _choose(graph: Graph, profile: MachineProfile, lanes: int, overrides: dict[str, str], default: str | None,
            context: set, measured, avoid: frozenset[str], *, weights_stream: bool) -> Graph:
    nodes = []
    for n in graph.nodes:
        spec = conv_spec_of(graph, n)
        if spec is None:
            nodes.append(n)
            continue
        forced = overrides.get(n.name) or overrides.get(n.scope or "")
        default_runs = default is not None and lowering(default).supports(spec) is None
        rule = next((name for name in RULE_LOWERINGS if lowering(name).supports(spec) is None), None)
        if forced is None and not default_runs and rule is not None:
            nodes.append(replace(n, attrs=replace(n.attrs, lowering=rule, predicted_us=(), measured_us=())))
            continue
        blocked = n.name in context and n.inputs[0] in context
        blocked_output = n.name in context and n.inputs[0] not in context  # an NCHW input, e.g. a stem's
        predicted = predict_all(spec, profile, lanes, blocked=blocked, weights_stream=weights_stream,
                                blocked_output=blocked_output)
        if forced is not None:
            reason = lowering(forced).supports(spec)
            if reason is not None:
                raise LoweringError(f"lowering override for %{n.name} ({n.scope or 'no module'}, "
                                    f"{spec.describe()}): {forced} can't run it: {reason}")
            choice = forced
        elif default_runs:
            choice = default
        else:
            allowed = {name: t for name, t in predicted.items() if name not in avoid}
            choice = min(allowed, key=allowed.get) if allowed else "direct"
        timed = _measured(spec, predicted, (measured or {}).get(spec.key(), {}), profile, lanes, blocked,
                          weights_stream, blocked_output)
        timed = {name: t for name, t in timed.items() if name not in avoid}
        if len(timed) > 1 and choice not in (forced, default):
            choice = min(timed, key=timed.get)
        suffix = BLOCKED if blocked else ""
        nodes.append(replace(n, attrs=replace(n.attrs, lowering=choice, predicted_us=_microseconds(predicted, suffix),
                                              measured_us=_microseconds(timed, suffix))))
    return graph.replace(nodes=tuple(nodes))


def _measured(spec, predicted: dict[str, float], measured: Mapping[str, Mapping[str, float]], profile: MachineProfile, lanes: int,
              blocked: bool, weights_stream: bool, blocked_output: bool) -> dict[str, float]:
    """Measured seconds of N(s) and of every other candidate measured on s (a job may measure beyond the
    margin: those are as real), or {} when a lowering of N(s) wasn't measured."""
    near = near_best(predicted)
    others = [name for name in predicted if name not in near
              and measured_all(spec, [name], measured, profile, lanes, blocked, blocked_output=blocked_output)]
    return measured_all(spec, near + others, measured, profile, lanes, blocked, weights_stream, blocked_output)


def _microseconds(seconds: dict[str, float], suffix: str) -> tuple[tuple[str, float], ...]:
    return tuple((name + suffix, float(f"{s * 1e6:.4g}")) for name, s in seconds.items())
