"""The pass pipeline: an explicit ordered list of passes and the instruments around each one.

Instruments (TVM's PassInstrument idea, without the plumbing):
- dump: write the IR to ``DIR/000_capture.ir`` and, after each pass that changed the graph,
  ``DIR/{i:03d}_{pass}.ir`` (i is the pass's position in the pipeline);
- verify: run ``convopt.ir.verify`` after every pass (option ``verify=True`` or ``CONVOPT_VERIFY=1``);
- timing: seconds per pass, in the returned records;
- selection: ``only`` runs just the named passes, ``skip`` (or ``CONVOPT_SKIP_PASSES=a,b``) leaves some out.
An exception inside a pass is re-raised as PassError naming the pass and the passes that ran before it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .ir.graph import Graph
from .ir.verify import verify as verify_graph
from .passes import canonicalize, eliminate_dead_code, fold_constants, fold_conv_bn, merge_branches, tune_conv_bn


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph], Graph]


def _pass(fn: Callable[[Graph], Graph]) -> Pass:
    return Pass(fn.__name__, fn)


# The pipelines, in order. Later issues insert their passes here.
INFERENCE_PIPELINE: tuple[Pass, ...] = (
    _pass(canonicalize),
    _pass(fold_constants),
    _pass(fold_conv_bn),
    _pass(merge_branches),
    _pass(eliminate_dead_code),
)
TRAIN_PIPELINE: tuple[Pass, ...] = (
    _pass(canonicalize),
    _pass(tune_conv_bn),
    _pass(eliminate_dead_code),
)
PIPELINES = {"inference": INFERENCE_PIPELINE, "train": TRAIN_PIPELINE}


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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


# Passes that need the compile target, so optimize() runs them once the target is known (TVM CPU only).
LATE_PASSES: dict[str, tuple[str, ...]] = {"inference": ("select_lowering",), "train": ()}


def _skipped(skip: Iterable[str]) -> set[str]:
    return set(skip) | {s for s in os.environ.get("CONVOPT_SKIP_PASSES", "").split(",") if s}


def select_passes(passes: Sequence[Pass], *, only: Iterable[str] | None = None,
                  skip: Iterable[str] = (), late: Sequence[str] = ()) -> tuple[Pass, ...]:
    """The passes to run; ``late`` names passes run later (LATE_PASSES), valid in ``only`` and ``skip``."""
    known = {p.name for p in passes} | set(late)
    skip = _skipped(skip)
    only = None if only is None else list(only)
    for name in (only or []) + sorted(skip):
        if name not in known:
            raise ValueError(f"unknown pass {name!r}; the pipeline has: "
                             f"{', '.join([p.name for p in passes] + list(late))}")
    return tuple(p for p in passes if (only is None or p.name in only) and p.name not in skip)


def is_selected(name: str, *, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> bool:
    return (only is None or name in list(only)) and name not in _skipped(skip)


def run_passes(graph: Graph, passes: Sequence[Pass], *, dump_dir: str | os.PathLike | None = None,
               verify: bool | None = None, first_index: int = 1,
               ran_before: Sequence[str] = ()) -> tuple[Graph, list[PassRecord]]:
    """Run ``passes`` in order with the instruments; returns the final graph and one record per pass.

    ``first_index`` and ``ran_before`` continue a pipeline run earlier (dump numbering, error messages)."""
    if verify is None:
        verify = _env_flag("CONVOPT_VERIFY")
    out = Path(dump_dir) if dump_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if first_index == 1:
            (out / "000_capture.ir").write_text(str(graph))
    if verify:
        verify_graph(graph)
    records: list[PassRecord] = []
    for index, p in enumerate(passes, start=first_index):
        start = time.perf_counter()
        try:
            result = p.run(graph)
            if verify:
                verify_graph(result)
        except Exception as e:
            raise PassError(p.name, [*ran_before, *(r.name for r in records)], e) from e
        seconds = time.perf_counter() - start
        changed = result != graph
        path = None
        if out is not None and changed:
            path = out / f"{index:03d}_{p.name}.ir"
            path.write_text(str(result))
        records.append(PassRecord(p.name, seconds, changed, path))
        graph = result
    return graph, records
