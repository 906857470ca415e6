"""Applying tuning records when a model is compiled: each kernel runs the fastest schedule measured for its
workload on this target, or its hand-written default.

A schedule's time is the median of its latest ``RECENT`` records (a tuning job measures the best few again
beside the default, so one lucky measurement doesn't make a winner), and a tuned schedule replaces the default
only when it is at least ``MIN_GAIN`` faster: below that, the difference is within the noise of a shared
machine and the measured default is the safer choice. Only the latest: the records of one workload pile up
over jobs run in other hours of a shared machine, and pooled, a schedule measured in a faster hour beat the
default measured now (resnet50's 1024->256 at 14 px on an Intel VM: records of sessions before at 256-278 us
made a 1.15x "win", while side by side in the last job's confirmation it ran 327-338 against the default's
314-332, and in the model 3% slower; 15 of resnet50's 20 "tuned" kernels ran slower in the model so).

The records come from every folder of this target's key (records.py) under, in order: the repository's
shipped ``tuning_logs/``, ``$CONVOPT_TUNING_LOGS``, ``./tuning_logs`` (where ``convopt tune`` writes by
default) and the ``tuning_logs=`` argument of optimize(). Among all records of a workload the schedule with
the lowest median time wins (as above); a record never changes results, only speed (it is a schedule of the
same computation, or for a written-out fused kernel another kernel of the same computation that its
generator builds from the record's decisions: schedules/fused_space.py; records of another version of the
generator are left out, and a kernel with only such records is "stale").

The default schedule is recognised by its trace: a tuning job measures it first, so every tuned kernel
knows how much faster its tuned code is (``KernelTuning``). Records among which today's default is missing
were measured against an older default (its hand-written schedule changed since; the workload, the
computation, did not): they are "stale" and the kernel runs today's default, because nothing measured says
whether the old winner beats it. A tuning job run again measures the new default beside them.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import tvm

import tvm_ffi

from ..target import Target
from .in_model import REJECTED, read_rejected, record_id, set_aside
from .records import PACKED, RECORDS, SHIPPED_LOGS, WORKLOADS, other_keys, read_index, records_dir

MIN_GAIN = 1.03
RECENT = 2  # a schedule's latest measurements that count: a job's confirmation rounds (job.CONFIRM_ROUNDS)
STATUSES = ("tuned", "default", "untuned", "stale")  # KernelTuning.status, in the order summaries list them
ENV_LOGS = "CONVOPT_TUNING_LOGS"
LOCAL_LOGS = Path("tuning_logs")  # relative to the working directory: `convopt tune`'s default


@dataclass(frozen=True)
class KernelTuning:
    """How a kernel was scheduled: "tuned" (a searched schedule measured faster than the default), "default"
    (tuned, and the default stayed the fastest), "untuned" (no record for its workload on this target) or
    "stale" (records measured against an older default schedule: today's default runs; tune again)."""

    status: str
    default_us: float | None = None  # measured by the tuning job
    best_us: float | None = None
    workload: str | None = None  # "tuned": the workload's structural hash and the record's id (in_model.py)
    record: str | None = None

    @property
    def speedup(self) -> float | None:
        if self.default_us is None or self.best_us is None:
            return None
        return self.default_us / self.best_us

    def to_attr(self) -> str:
        return json.dumps({"status": self.status, "default_us": self.default_us, "best_us": self.best_us,
                           "workload": self.workload, "record": self.record})


def trace_key(trace) -> str:
    """A trace's instructions and decisions as text: equal for the same schedule however it was stored."""
    return str(trace)


def mean_seconds(record) -> float:
    return statistics.fmean(float(s) for s in record.run_secs)


@dataclass(frozen=True)
class Choice:
    """What the records of one workload say: the schedule to run (its trace, None for the default) and the
    measured times (seconds; None where not measured)."""

    trace: object | None
    default_s: float | None
    best_s: float | None


def choose(records: list, default_key: str, recent: int | None = RECENT) -> Choice:
    """The schedule the records of one workload pick (see the module docstring), given its default trace's key;
    ``records`` in the order they were measured (``recent=None``: in any order, every record counts)."""
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(trace_key(record.trace), []).append(record)
    times = {key: [mean_seconds(r) for r in group] for key, group in groups.items()}
    best_key, default_s, best_s = choose_key(times, default_key, recent)
    return Choice(None if best_key is None else groups[best_key][0].trace, default_s, best_s)


def choose_key(times: dict[str, list[float]], default_key: str | None, recent: int | None = RECENT
               ) -> tuple[str | None, float | None, float | None]:
    """(the key of the schedule to run, None for the default; the default's seconds; the chosen one's) from
    the mean seconds of each schedule's records, by key, in the order they were measured (see the module
    docstring: the latest ``recent`` count; None: all)."""
    timed = {key: statistics.median(seconds[-recent:] if recent else seconds)
             for key, seconds in times.items() if seconds}
    default_s = timed.get(default_key)
    if not timed:
        return None, None, None
    best_key = min(timed, key=timed.get)
    best_s = timed[best_key]
    if best_key == default_key or (default_s is not None and best_s * MIN_GAIN > default_s):
        return None, default_s, default_s if default_s is not None else best_s
    return best_key, default_s, best_s


def default_log_dirs(tuning_logs: str | os.PathLike | Iterable | None = None) -> list[Path]:
    """The folders optimize() reads records from (see the module docstring), existing ones, each once."""
    dirs = [SHIPPED_LOGS]
    if os.environ.get(ENV_LOGS):
        dirs += [Path(p) for p in os.environ[ENV_LOGS].split(os.pathsep) if p]
    dirs.append(LOCAL_LOGS)
    if tuning_logs is not None:
        dirs += [Path(tuning_logs)] if isinstance(tuning_logs, (str, os.PathLike)) else [Path(p) for p in tuning_logs]
    seen, unique = set(), []
    for d in dirs:
        resolved = d.resolve()
        if resolved not in seen and resolved.is_dir():
            seen.add(resolved)
            unique.append(d)
    return unique


_WARNED: set = set()  # (target key, other keys) already warned about


def _stamp(folder: Path) -> tuple:
    return tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                 for p in (folder / RECORDS, folder / WORKLOADS, folder / PACKED))


@functools.lru_cache(maxsize=16)
def _cached_index(log_dir: str, target: Target, stamp: tuple):
    """A log folder's RecordIndex, read once per process while its files don't change."""
    return read_index(target, log_dir)


_STALE_WARNED: set = set()  # kernel names already warned about


def warn_stale(names: list[str]) -> None:
    """Say once per process which kernels run today's default over stale records (made against an older
    default schedule; see the module docstring)."""
    new = [name for name in names if name not in _STALE_WARNED]
    if not new:
        return
    _STALE_WARNED.update(new)
    warnings.warn(f"{len(new)} kernel(s) ({', '.join(new[:3])}{', ...' if len(new) > 3 else ''}) have tuning "
                  "records measured against an older version of their default schedule; they run today's "
                  "default. Run `convopt tune` on the model again to remeasure", stacklevel=2)


def _rejected(folder: Path) -> dict:
    path = Path(folder) / REJECTED
    return _cached_rejected(str(folder), (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None)


@functools.lru_cache(maxsize=16)
def _cached_rejected(folder: str, stamp: tuple) -> dict:
    return set_aside(read_rejected(Path(folder)))


def generator_reads(generator, trace) -> bool:
    """Whether a written-out kernel's generator reads ``trace``'s decisions (a record of its version)."""
    try:
        generator.tiles_of(trace)
    except ValueError:
        return False
    return True


class TunedSchedules:
    """The tuning records of one target, from several log folders; ``schedule`` picks a kernel's schedule."""

    def __init__(self, target: Target, log_dirs: Iterable[str | os.PathLike], *, confirmed_only: bool = True):
        """``confirmed_only``: leave out the schedules set aside as slower inside the model (in_model.py); a
        tuning job's check turns it off to measure them in the model again."""
        self.target = target
        self.confirmed_only = confirmed_only
        self.log_dirs = [Path(d) for d in log_dirs]
        indexes = (_cached_index(str(d.resolve()), target, _stamp(records_dir(target, d))) for d in self.log_dirs)
        self.indexes = [index for index in indexes if index is not None]

    @classmethod
    def for_target(cls, target: Target, tuning_logs=None) -> "TunedSchedules":
        """The records optimize() applies for ``target``. Records made for other target keys are not applied
        (records.py says why); when only those exist in the user's folders, a warning names them (once per
        process; the shipped records of other machines are no news)."""
        found = cls(target, default_log_dirs(tuning_logs))
        if not found.indexes:
            users = [d for d in found.log_dirs if d.resolve() != SHIPPED_LOGS.resolve()]
            others = tuple(sorted({key for d in users for key in other_keys(target, d)}))
            if others and (target.key, others) not in _WARNED:
                _WARNED.add((target.key, others))
                warnings.warn(f"tuning records exist for {', '.join(others)} but not for this target "
                              f"({target.key}); kernels run their default schedules. Run `convopt tune` here "
                              "to tune for this machine", stacklevel=3)
        return found

    def __bool__(self) -> bool:
        return bool(self.indexes)

    def holds(self, workload: tvm.IRModule) -> bool:
        """Whether any folder has a measured record of ``workload`` (cheap: no schedule is made)."""
        return any(index.records(workload) for index in self.indexes)

    def schedule(self, workload: tvm.IRModule, default: Callable[[tvm.s_tir.Schedule], None], name: str = "kernel",
                 generator=None) -> tuple[tvm.tirx.PrimFunc, KernelTuning]:
        """(``workload``'s "main" scheduled by its fastest record, else by ``default``; how it was scheduled).
        ``generator``: for a kernel written out rather than scheduled, its space (schedules/fused_space.py),
        which builds the kernel a schedule's sampled decisions name (its default schedule leaves the workload
        as it is); records whose decisions it doesn't read (another version of it) are left out."""
        _, func, tuning = self.chosen_schedule(workload, default, name, generator)
        return func, tuning

    def chosen_schedule(self, workload: tvm.IRModule, default: Callable[[tvm.s_tir.Schedule], None],
                        name: str = "kernel", generator=None
                        ) -> tuple[tvm.s_tir.Schedule, tvm.tirx.PrimFunc, KernelTuning]:
        """(the schedule ``schedule`` runs: its fastest record's when status is "tuned", else ``default``'s; its
        PrimFunc; how it was scheduled)."""
        sch = tvm.s_tir.Schedule(workload)
        default(sch)
        groups: dict[str, list] = {}  # stored trace -> its records, from every folder
        shash = str(tvm_ffi.structural_hash(workload))
        for index in self.indexes:
            for record in index.records(workload):
                groups.setdefault(record.key, []).append(record)
        # schedules a job found slower inside the model than the default (in_model.py): never chosen
        aside = ({rid for index in self.indexes for rid in _rejected(index.folder).get(shash, ())}
                 if self.confirmed_only else set())
        groups = {key: group for key, group in groups.items() if record_id(key) not in aside}
        if generator is not None:
            readable = {key: group for key, group in groups.items() if generator_reads(generator, group[0].trace())}
            if groups and not readable:  # every record made by another version of the generator
                return sch, sch.mod["main"], KernelTuning("stale")
            groups = readable
        if not groups:
            return sch, sch.mod["main"], KernelTuning("untuned")
        default_trace = trace_key(sch.trace)
        # the default is usually the first schedule stored (a job measures it first): parse until found
        default_key = next((key for key, group in groups.items() if trace_key(group[0].trace()) == default_trace), None)
        if default_key is None:
            return sch, sch.mod["main"], KernelTuning("stale")
        best_key, default_s, best_s = choose_key({k: [r.seconds for r in g] for k, g in groups.items()}, default_key)
        default_us, best_us = (None if s is None else s * 1e6 for s in (default_s, best_s))
        if best_key is None:
            return sch, sch.mod["main"], KernelTuning("default", default_us, best_us)
        tuned = tvm.s_tir.Schedule(workload)
        try:
            groups[best_key][0].trace().apply_to_schedule(tuned, remove_postproc=False)
            func = tuned.mod["main"] if generator is None else generator.realize(tuned)
        except Exception as e:  # noqa: BLE001 - a record that no longer replays (the kernel changed): default
            warnings.warn(f"the tuning record of {name} no longer applies ({type(e).__name__}); it runs its "
                          "default schedule", stacklevel=3)  # (the caller of ``schedule``)
            return sch, sch.mod["main"], KernelTuning("untuned")
        return tuned, func, KernelTuning("tuned", default_us, best_us, shash, record_id(best_key))

