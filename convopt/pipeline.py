"""The pass pipeline: ``build(mode, target, ...)`` makes the ordered list of passes for a mode and a compile
target, and ``run_passes`` runs it with the instruments around each pass.

The pipelines, in order:

    inference  canonicalize, fold_constants, fold_conv_bn, merge_branches, eliminate_dead_code,
               then fuse_blocks, select_lowering, block_layout and fold_channel_scale when the target is a TVM
               CPU target (they need the target's SIMD width and the cost-model profile of the target's
               machine; fold_channel_scale, the lowerings select_lowering chose); on CUDA,
               fuse_blocks when optimize(fuse_blocks={...: True}) names blocks (only those are fused)
    train      canonicalize, tune_conv_bn, eliminate_dead_code

Instruments (TVM's PassInstrument idea, without the plumbing):
- dump: write the IR to ``DIR/000_capture.ir`` and, after each pass that changed the graph,
  ``DIR/{i:03d}_{pass}.ir`` (i is the pass's position in the pipeline);
- verify: run ``convopt.ir.verify`` after every pass;
- timing: seconds per pass, in the returned records;
- selection: ``only`` runs just the named passes, ``skip`` leaves some out (``build`` checks the names).
An exception inside a pass is re-raised as PassError naming the pass and the passes that ran before it.
Environment variables (CONVOPT_VERIFY, CONVOPT_SKIP_PASSES) are read by the caller, at the API boundary.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .ir.graph import Graph
from .ir.verify import verify as verify_graph
from .passes import canonicalize, eliminate_dead_code, fold_constants, fold_conv_bn, merge_branches, tune_conv_bn
from .target import Target


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph], Graph]


def _pass(fn: Callable[[Graph], Graph]) -> Pass:
    return Pass(fn.__name__, fn)


MODES = ("inference", "train")
_GRAPH_PASSES: dict[str, tuple[Pass, ...]] = {
    "inference": tuple(map(_pass, (canonicalize, fold_constants, fold_conv_bn, merge_branches, eliminate_dead_code))),
    "train": tuple(map(_pass, (canonicalize, tune_conv_bn, eliminate_dead_code))),
}


def build(mode: str, target: Target | None = None, *, lowering: str | dict[str, str] | None = None,
          only: Iterable[str] | None = None, skip: Iterable[str] = (),
          measured: Mapping[str, Mapping[str, float]] | None = None,
          fuse_blocks: bool | dict[str, bool] = True, avoid_lowerings: Iterable[str] = ()) -> tuple[Pass, ...]:
    """The passes to run for ``mode`` and ``target`` (None or "torch": no target-specific passes).

    ``lowering`` (a lowering name, or {layer: name}) configures select_lowering and is validated here,
    before any pass runs; ``measured`` gives it the lowerings' measured times by conv shape (from tuning
    records: tuning/lowering_times.py); ``fuse_blocks``: False leaves the fuse_blocks pass out, a dict
    {module or node: bool} forces it per block; ``avoid_lowerings``: lowerings select_lowering never picks unless
    forced; ``only`` / ``skip`` select passes by name."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, not {mode!r}")
    passes = _GRAPH_PASSES[mode]
    chooses_lowering = mode == "inference" and isinstance(target, Target) and target.is_cpu
    if chooses_lowering:
        from .passes.block_layout import block_layout

        layout = Pass("block_layout", functools.partial(block_layout, lanes=target.lanes))
        # select_lowering predicts blocked neighbours only when block_layout will make them
        skip = set(skip)
        only = None if only is None else list(only)
        blocks = "block_layout" not in skip and (only is None or "block_layout" in only)
        pinned = frozenset(lowering) if isinstance(lowering, dict) else frozenset()
        fusion = ((_fuse_blocks(target, fuse_blocks if isinstance(fuse_blocks, dict) else None, pinned),)
                  if fuse_blocks else ())
        from .passes.fold_channel_scale import fold_channel_scale

        passes = (*passes, *fusion, _select_lowering(target, lowering, blocks, measured, frozenset(avoid_lowerings)),
                  layout, _pass(fold_channel_scale))
    elif mode == "inference" and isinstance(target, Target) and isinstance(fuse_blocks, dict):
        # CUDA: no GPU has measured a fused kernel against the unfused ops, so only the blocks
        # fuse_blocks={...: True} names are fused (schedules/fused_block_cuda.py)
        passes = (*passes, _fuse_blocks_on_request(fuse_blocks))
    selected = select_passes(passes, only=only, skip=skip)
    if isinstance(fuse_blocks, dict) and fuse_blocks and not any(p.name == "fuse_blocks" for p in selected):
        fuses = mode == "inference" and isinstance(target, Target)
        where = "the fuse_blocks pass is left out" if fuses else f"target {target or 'torch'} runs no fused kernels"
        raise ValueError(f"fuse_blocks names blocks to fuse ({', '.join(fuse_blocks)}), but {where}")
    if lowering is not None:
        _check_lowering_names(lowering)
        if not any(p.name == "select_lowering" for p in selected):
            where = ("the select_lowering pass is left out" if chooses_lowering else
                     f"target {target or 'torch'} runs no convopt conv kernels")
            raise ValueError(f"lowering= chooses conv algorithms for a TVM CPU target, but {where}")
    return selected


def _fuse_blocks(target: Target, overrides: dict[str, bool] | None, pinned: frozenset[str]) -> Pass:
    """fuse_blocks deciding by the cost model of the target's machine (cost/fused.py): a block is fused where
    its fused kernel is predicted faster by more than its kind's ``cost.fused.fusion_margin``; with no fused
    coefficients in the profile, none is; none holding a conv ``pinned`` by lowering={...} unless forced."""
    from .cost.fused import fusion_margin, predict_block
    from .cost.profile import load_profile
    from .passes.fuse_blocks import fuse_blocks

    profile = load_profile(target)

    def predict(graph, block):
        return predict_block(block, profile, target.lanes)

    return Pass("fuse_blocks", functools.partial(fuse_blocks, predict=predict, overrides=overrides,
                                                 margin=fusion_margin, pinned=pinned))


def _fuse_blocks_on_request(overrides: dict[str, bool]) -> Pass:
    """fuse_blocks fusing only the blocks ``overrides`` forces (a target with no cost model for fusion), of the
    kinds CUDA has a fused kernel for."""
    from .passes.fuse_blocks import fuse_blocks
    from .schedules.fused_block_cuda import KINDS, supports

    return Pass("fuse_blocks", functools.partial(fuse_blocks, predict=lambda graph, block: None, overrides=overrides,
                                                 kinds=KINDS, refuse=supports))


def _check_lowering_names(lowering: str | dict[str, str]) -> None:
    from .schedules.lowerings import lowering as lowering_named

    for name in ([lowering] if isinstance(lowering, str) else lowering.values()):
        lowering_named(name)  # raises LoweringError naming the lowerings there are


def _select_lowering(target: Target, lowering: str | dict[str, str] | None, blocked_layouts: bool,
                     measured: Mapping[str, Mapping[str, float]] | None, avoid: frozenset[str]) -> Pass:
    from .cost.profile import load_profile
    from .passes.select_lowering import select_lowering

    return Pass("select_lowering", functools.partial(
        select_lowering, profile=load_profile(target), lanes=target.lanes, blocked_layouts=blocked_layouts,
        measured=measured, avoid=avoid,
        overrides=lowering if isinstance(lowering, dict) else None,
        default=lowering if isinstance(lowering, str) else None))


class PassError(RuntimeError):
    def __init__(self, pass_name: str, ran_before: Sequence[str], cause: BaseException):
        before = ", ".join(ran_before) or "none"
        super().__init__(f"pass '{pass_name}' failed (passes run before it: {before}): "
                         f"{type(cause).__name__}: {cause}")
        self.pass_name = pass_name
        self.ran_before = tuple(ran_before)


@dataclass(frozen=True)
class PassRecord:
    name: str
    seconds: float
    changed: bool
    dump: Path | None


def select_passes(passes: Sequence[Pass], *, only: Iterable[str] | None = None,
                  skip: Iterable[str] = ()) -> tuple[Pass, ...]:
    """The passes to run, in the pipeline's order; unknown names are refused."""
    known = [p.name for p in passes]
    skip = set(skip)
    only = None if only is None else list(only)
    for name in (only or []) + sorted(skip):
        if name not in known:
            raise ValueError(f"unknown pass {name!r}; the pipeline has: {', '.join(known)}")
    return tuple(p for p in passes if (only is None or p.name in only) and p.name not in skip)


def run_passes(graph: Graph, passes: Sequence[Pass], *, dump_dir: str | os.PathLike | None = None,
               verify: bool = False) -> tuple[Graph, list[PassRecord]]:
    """Run ``passes`` in order with the instruments; returns the final graph and one record per pass."""
    out = Path(dump_dir) if dump_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "000_capture.ir").write_text(str(graph))
    if verify:
        verify_graph(graph)
    records: list[PassRecord] = []
    for index, p in enumerate(passes, start=1):
        start = time.perf_counter()
        try:
            result = p.run(graph)
            if verify:
                verify_graph(result)
        except Exception as e:
            raise PassError(p.name, [r.name for r in records], e) from e
        seconds = time.perf_counter() - start
        changed = result != graph
        path = None
        if out is not None and changed:
            path = out / f"{index:03d}_{p.name}.ir"
            path.write_text(str(result))
        records.append(PassRecord(p.name, seconds, changed, path))
        graph = result
    return graph, records
