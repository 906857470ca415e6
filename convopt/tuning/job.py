"""``convopt.tune``: a tuning job. Measures the points of each kernel's design space (tasks.py) on the target and
keeps every measurement in the target's record folder (records.py), which optimize() applies (apply.py).

    summary = convopt.tune(model, (x,), trials=200, time_budget="15m")

1. The model goes through optimize()'s pipeline (no records applied); the untuned end-to-end latency is
   measured, and the tasks are extracted (tasks.py). The lowering choice is tuned too: for each conv, every
   other lowering the cost model predicts within ``MEASURE_MARGIN`` of its best (cost/model.near_best) is
   forced on it in another run of the pipeline, and that graph's kernels of the lowering join the tasks
   (``_alternatives``; a kernel equal to one already there is not added twice).
2. Each task's default schedule is measured and committed first (once per task, ever), so tuning can only
   improve on it, and every record knows its default.
3. The trial budget is shared in proportion to each task's weighted default time (calls per run x
   seconds per call), at least ``MIN_TRIALS`` each, never more than a task's space has points; what a
   small space can't use goes to the others. Tasks are measured in rounds of up to ``ROUND`` trials; each
   round goes to the task furthest behind its share, so a time budget that ends the job early leaves
   every task equally far along; near the end of the budget a round shrinks to the trials that fit
   (``round_size``: the rounds' measured seconds per trial).
4. A task of convopt's kernels has its points measured nearest the default first (Task.points: fewest
   changed decisions, then the smallest moves), each once. Those spaces are the schedules' register tiles,
   tens of points (at most a few hundred), so they are enumerated rather than searched: a space a job can
   measure whole leaves an evolutionary search's XGBoost model nothing to predict (and its TuneContext imports
   TVM's tensor intrinsics: 7 s on 2 cores with torch loaded through intrinsics.py, 40-160 s without). A task of
   TVM's own kernels (tasks.GENERATED: every kernel on CUDA, the heavy other ops on a CPU with
   ``other_ops``) has MetaSchedule's rules as its space, far too large to enumerate: it is searched
   (``_search``), paying the TuneContext once per job; so is the CUDA fused block kernel's own space
   (sampled perfect tiles: schedules/fused_block_cuda.py).
5. Each task tuned in this job has its default and its fastest few schedules measured again side by side
   (``_confirm``): optimize() picks by the median over a schedule's records (apply.choose).
6. Resume: the trials a task already has in the database count against its share and its measured
   points are skipped (a written-out fused kernel's records of another version of its generator neither
   count nor are confirmed: schedules/fused_space.py); a killed job started again runs only what each
   task still owes (losing the trials in flight). A task whose records lack today's default (its hand-written schedule changed since:
   "stale", apply.py) owes its whole share again and is confirmed (5), so its old records are measured
   again beside the new default (a job killed after committing the new default forgets this: started
   again, it counts the old records as trials done).
7. The lowerings of one conv (the model's and the alternatives of step 1) have the schedules optimize() would
   run measured again together, in one batch per round (rivals.py): compared from measurements minutes
   apart, a neighbour's slow phase could decide the lowering. Every job does this, even one with no trials
   left to run, so a job started again on a tuned model re-measures its lowering choices.
8. Each conv kernel's default and best time go into the folder's lowering_times.json (by conv shape and
   lowering); optimize() picks, among the lowerings measured for a conv, the fastest
   (passes/select_lowering.py), and ``convopt calibrate --from-logs`` refits the cost model to them.
9. Where the model runs on this machine, the tuned build is checked inside the model: every tuned kernel
   timed against its default there (in_model.py; a schedule not faster by the median of the latest jobs'
   timings is set aside), then the whole model, untuned and tuned alternating; lowerings the measurements
   switched that leave the model slower, twice, are forgotten (``SWITCH_MARGIN``).

Measurement is MetaSchedule's: one builder (builder.py; workers that live for the whole job) and one
runner. ``rpc="HOST:PORT:KEY"`` measures on the devices registered with TVM's RPC tracker under KEY
(builds stay local).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import tvm
import tvm_ffi

from ..target import Target, resolve_target
from ..cost.model import MEASURE_MARGIN
from ..ir.graph import Graph
from ..ir.ops import Op
from ..schedules.conv_spec import conv_spec_of
from .apply import LOCAL_LOGS, RECENT, TunedSchedules, choose, default_log_dirs, generator_reads, trace_key
from .in_model import KEEP, REJECTED, observe, record_observations, set_aside
from .lowering_times import forget, kernel_variants, write_times
from .records import FAILED, open_database, pack, records_dir, trials_done
from .rivals import measure_rivals, rival_groups
from .tasks import Task, extract_tasks, generated_tasks, is_conv_lowering

ROUND = 16  # trials per round of one task
MIN_TRIALS = 16  # each task's share of the budget, at least
TRIALS_PER_TASK = 64  # the default budget: this many per task
CONFIRM_TOP, CONFIRM_ROUNDS = 3, 2  # each tuned task's fastest schedules measured again beside the default


@dataclass
class TaskReport:
    name: str
    kind: str
    nodes: list[str]
    weight: int
    trials: int  # records in the database (the default included)
    default_us: float
    best_us: float
    alternative: bool = False  # measured for the lowering choice; not in the model as the cost model lowers it

    @property
    def speedup(self) -> float:
        return self.default_us / self.best_us

    @property
    def saved_us(self) -> float:
        """Per model run."""
        return self.weight * (self.default_us - self.best_us)


@dataclass
class TuningSummary:
    target: str  # the target key
    log_dir: Path  # the folder of this target's records
    tasks: list[TaskReport]
    new_trials: int  # measured by this job
    seconds: float
    untuned_ms: float | None  # all default schedules (measured again after tuning, alternating with tuned_ms)
    tuned_ms: float | None = None  # with the records applied, measured after tuning (None: not measured)
    stopped: str = ""  # why the job ended before its budget ("time budget"), if it did
    per_trial_s: float = 0.0
    # (conv node, lowering the cost model chose, lowering the measurements choose) where they differ
    lowering_changes: list[tuple[str, str, str]] = field(default_factory=list)
    alternatives: int = 0  # tasks added to measure other lowerings
    # (conv shapes whose measured lowerings were dropped, the model's ms with them) when the whole model ran
    # slower with the lowerings the measurements chose than without (SWITCH_MARGIN); None: kept or not measured
    rejected_switches: tuple[int, float] | None = None
    # (tuned schedules set aside because their kernels were not faster inside the model than their defaults,
    # by the median of the latest jobs' observations; tuned kernels observed: in_model.py); None: not measured
    rejected_in_model: tuple[int, int] | None = None

    @property
    def estimated_ms(self) -> float | None:
        """The untuned latency less the measured saving of each kernel it runs (what the schedules in the records
        should give; a lowering the measurements change is not counted)."""
        if self.untuned_ms is None:
            return None
        return self.untuned_ms - sum(t.saved_us for t in self.tasks if not t.alternative) / 1000

    def table(self) -> str:
        lines = [f"tuning records: {self.log_dir}",
                 f"{'task':<40} {'kind':<10} {'calls':>5} {'trials':>6} {'default us':>10} {'best us':>9} "
                 f"{'speedup':>7}"]
        for t in sorted(self.tasks, key=lambda t: -t.weight * t.default_us):
            kind = t.kind + ("*" if t.alternative else "")
            lines.append(f"{t.name[:40]:<40} {kind:<10} {t.weight:>5} {t.trials:>6} {t.default_us:>10.1f} "
                         f"{t.best_us:>9.1f} {t.speedup:>6.2f}x")
        if self.alternatives:
            changes = ", ".join(f"{node} {old} -> {new}" for node, old, new in self.lowering_changes[:6])
            more = f" and {len(self.lowering_changes) - 6} more" if len(self.lowering_changes) > 6 else ""
            lines.append(f"lowerings: {self.alternatives} kernels (kind*) measured other lowerings; "
                         + (f"the measurements change {len(self.lowering_changes)} convs: {changes}{more}"
                            if self.lowering_changes else "the cost model's choices stay fastest"))
        if self.rejected_switches:
            shapes, slower = self.rejected_switches
            lines.append(f"lowerings: with the lowerings measured fastest kernel by kernel the model ran {slower:.2f} "
                         f"ms, slower than untuned: their times for {shapes} conv shapes were dropped, and the cost "
                         "model chooses those lowerings again")
        if self.rejected_in_model and self.rejected_in_model[0]:
            count, observed = self.rejected_in_model
            lines.append(f"in the model: {count} of {observed} tuned kernels were not faster than their defaults (the "
                         f"median of the latest {KEEP} jobs' timings); their schedules are set aside ({REJECTED}) "
                         "and the next-best schedules run")
        lines.append(f"{len(self.tasks)} tasks, {self.new_trials} new trials in {self.seconds:.0f} s"
                     + (f" ({self.per_trial_s:.2f} s per trial)" if self.new_trials else "")
                     + (f"; stopped: {self.stopped}" if self.stopped else ""))
        if self.untuned_ms is not None:
            line = f"end to end: untuned {self.untuned_ms:.2f} ms, estimated tuned {self.estimated_ms:.2f} ms"
            if self.tuned_ms is not None:
                line += f", measured tuned {self.tuned_ms:.2f} ms ({self.untuned_ms / self.tuned_ms:.2f}x)"
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def parse_duration(value: str | float | int | None) -> float | None:
    """Seconds from 90, "90s", "15m", "1.5h"; None stays None."""
    if value is None or isinstance(value, (int, float)):
        return value
    text = value.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise ValueError(f"time budget {value!r}: give seconds, or a number with s, m or h (e.g. 15m)") from None


def parse_rpc(value: str):
    """A MetaSchedule RPCConfig from "HOST:PORT:KEY" (TVM's RPC tracker, and the key the servers registered)."""
    from tvm.s_tir import meta_schedule as ms

    parts = value.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0] or not parts[2]:
        raise ValueError(f"rpc {value!r}: expected HOST:PORT:KEY of a TVM RPC tracker (python -m tvm.exec.rpc_tracker)")
    host, port, key = parts
    return ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key, session_timeout_sec=120)


class Measurer:
    """One builder and one runner, kept for the whole job (their workers import tvm once)."""

    def __init__(self, target: Target, rpc: str | None = None, workers: int | None = None):
        from tvm.s_tir import meta_schedule as ms

        from .builder import PersistentBuilder

        workers = workers or max(1, min(target.cores, 4))
        # generous timeouts: a fresh worker imports tvm (and torch) before its first build
        self.builder = PersistentBuilder(max_workers=workers, timeout_sec=300)
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=30)
        if rpc:
            self.runner = ms.runner.RPCRunner(parse_rpc(rpc), evaluator_config=evaluator, max_workers=1)
        else:
            self.runner = ms.runner.LocalRunner(timeout_sec=120, evaluator_config=evaluator)
        self.target = target
        self.cost_models: dict[str, Any] = {}  # searched task -> its XGBoost model, kept across rounds (_search)
        self.failed_searches: set[str] = set()

    def run(self, mods: list) -> list:
        """MetaSchedule RunnerResults of building and running each IRModule (its PrimFunc "main")."""
        from tvm.s_tir import meta_schedule as ms

        built = self.builder.build([ms.builder.BuilderInput(mod, self.target.tvm) for mod in mods])
        device = "cpu" if self.target.is_cpu else "cuda"
        inputs = [(i, ms.runner.RunnerInput(b.artifact_path, device, ms.arg_info.ArgInfo.from_prim_func(mods[i]["main"])))
                  for i, b in enumerate(built) if b.error_msg is None]
        futures = dict(zip((i for i, _ in inputs), self.runner.run([r for _, r in inputs])))
        results = []
        for i, b in enumerate(built):
            result = futures[i].result() if i in futures else ms.runner.RunnerResult(None, b.error_msg)
            if result.error_msg:
                logging.getLogger(__name__).info("candidate failed: %s", result.error_msg)
            results.append(result)
        return results

    def close(self) -> None:
        """Stop the workers (an idle runner worker's threads would compete with the end-to-end timing)."""
        import gc

        self.builder.close()
        self.runner = None
        gc.collect()


def _commit_default(database, task: Task, measurer: Measurer, target: Target) -> bool:
    """Measure the task's default schedule and commit it, unless the database has it already. Returns
    whether the database held records of the task without today's default: stale ones (apply.py), made
    against an older default schedule."""
    sch = task.default()
    token = database.commit_workload(task.workload)
    key = trace_key(sch.trace)
    records = database.get_top_k(token, 1 << 30)
    if any(trace_key(r.trace) == key for r in records):
        return False
    (result,) = measurer.run([task.module(sch)])
    _commit(database, token, sch, result, target)
    return bool(records)


def _commit(database, token, sch, result, target: Target) -> None:
    """Commit one measurement (a failed one with MetaSchedule's FAILED time: it counts as a trial)."""
    from tvm.s_tir import meta_schedule as ms

    seconds = [float(s) for s in result.run_secs] if result.error_msg is None and result.run_secs else [FAILED]
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, token, seconds, target.tvm, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])))


def _readable(task: Task):
    """A test of a record's trace for ``task``: None for a scheduled kernel (every record of its workload
    counts); for a written-out one, whether its generator reads the trace (records of another version of
    the generator are neither chosen, confirmed nor counted as trials done)."""
    return None if task.generator is None else lambda trace: generator_reads(task.generator, trace)


def _times(database, task: Task) -> tuple[float, float]:
    """(default, chosen) microseconds per call while the job runs (its trial shares and progress), from every
    record of the task's workload: TVM's database keeps them by speed, not in the order measured, so not
    yet as optimize() chooses (``_final_times``)."""
    records = database.get_top_k(database.commit_workload(task.workload), 1 << 30)
    if task.generator is not None:  # as optimize() reads them: records of another generator version left out
        records = [r for r in records if _readable(task)(r.trace)]
    choice = choose(records, trace_key(task.default().trace), recent=None)
    if choice.default_s is None:
        raise RuntimeError(f"task {task.name}: its default schedule failed to build or run; see the logs under "
                           f"{database.path_tuning_record}")
    return choice.default_s * 1e6, choice.best_s * 1e6


def _final_times(schedules: TunedSchedules, task: Task) -> tuple[float, float]:
    """(default, chosen) microseconds per call as optimize() chooses: from the record files, in the order
    measured (apply.py: each schedule's latest measurements)."""
    _, tuning = schedules.schedule(task.workload, task.schedule, task.name, generator=task.generator)
    if tuning.default_us is None:
        raise RuntimeError(f"task {task.name}: its default schedule failed to build or run; see the logs under "
                           f"{schedules.log_dirs[0]}")
    return tuning.default_us, tuning.best_us if tuning.best_us is not None else tuning.default_us


def _confirm(task: Task, database, measurer: Measurer, target: Target, on_batch, top: int = CONFIRM_TOP,
             rounds: int = CONFIRM_ROUNDS) -> int:
    """Measure the default and the ``top`` fastest schedules of the task again, side by side, ``rounds``
    times: a schedule wins on its median (apply.choose), not on one lucky run measured at a quieter moment
    than the default. Returns the trials measured."""
    token = database.commit_workload(task.workload)
    default = task.default()
    default_key = trace_key(default.trace)
    fastest = {}
    readable = _readable(task)
    for record in database.get_top_k(token, 1 << 30):  # fastest first
        if readable is not None and not readable(record.trace):
            continue  # a record of another version of the kernel's generator
        key = trace_key(record.trace)
        if key != default_key and key not in fastest:
            fastest[key] = record.trace
        if len(fastest) == top:
            break
    if not fastest:
        return 0
    schedules, modules = [default], [task.module(default)]
    for trace in fastest.values():
        sch = tvm.s_tir.Schedule(task.workload)
        try:
            trace.apply_to_schedule(sch, remove_postproc=False)
            modules.append(task.module(sch))
        except Exception as e:  # noqa: BLE001 - a record of an older kernel generator (fused_space.SPACE_VERSION)
            logging.getLogger(__name__).info("%s: a record no longer builds, not confirmed: %s", task.name, e)
            continue
        schedules.append(sch)
    if len(schedules) == 1:
        return 0
    for _ in range(rounds):
        for sch, result in zip(schedules, measurer.run(modules)):
            _commit(database, token, sch, result, target)
        on_batch(len(schedules))
    return rounds * len(schedules)


def allocate(budget: int, costs: list[float], caps: list[int], minimum: int = MIN_TRIALS) -> list[int]:
    """Trials per task: ``budget`` in proportion to ``costs`` (weighted default seconds), at least ``minimum``
    each (an equal share when the budget is smaller), never more than a task's ``caps`` (its untried points);
    what a capped task can't use goes to the others."""
    shares = [0] * len(costs)
    open_tasks = [i for i in range(len(costs)) if caps[i] > 0]
    while budget > 0 and open_tasks:
        floor = min(minimum, budget // len(open_tasks))
        spare = budget - floor * len(open_tasks)
        total = sum(costs[i] for i in open_tasks) or 1.0
        wish = {i: floor + int(spare * costs[i] / total) for i in open_tasks}
        for i in sorted(open_tasks, key=lambda i: -costs[i])[: budget - sum(wish.values())]:
            wish[i] += 1  # the rounding remainder to the costliest tasks
        capped = [i for i in open_tasks if shares[i] + wish[i] >= caps[i]]
        if not capped:
            for i in open_tasks:
                shares[i] += wish[i]
            break
        for i in capped:  # fill these to their cap, then share the rest again
            budget -= caps[i] - shares[i]
            shares[i] = caps[i]
        open_tasks = [i for i in open_tasks if i not in capped]
    return shares


def round_size(owed: int, seconds_left: float | None, seconds_per_trial: float | None) -> int:
    """Trials for a task's next round: ``ROUND`` at most, what it still owes, and with a time budget what fits
    in the time left at the job's measured seconds per trial (at least one): the budget is checked between
    rounds, and a round of MetaSchedule's search can't be stopped inside."""
    size = min(ROUND, owed)
    if seconds_left is not None and seconds_per_trial:
        size = min(size, max(1, int(seconds_left / seconds_per_trial)))
    return size


def _enumerate(task: Task, trials: int, target: Target, database, measurer: Measurer, on_batch) -> int:
    """Measure up to ``trials`` points of the task's space not yet in ``database``, nearest the default first
    (Task.points); each batch committed as soon as it is measured. Returns the trials measured."""
    token = database.commit_workload(task.workload)
    seen = {trace_key(r.trace) for r in database.get_all_tuning_records() if r.workload.same_as(token)}
    fresh = task.points(skip=seen)
    measured = 0
    while measured < trials:
        batch = list(itertools.islice(fresh, min(ROUND, trials - measured)))
        if not batch:
            break
        for sch, result in zip(batch, measurer.run([task.module(sch) for sch in batch])):
            _commit(database, token, sch, result, target)
        measured += len(batch)
        on_batch(len(batch))
    return measured


SEARCH_WARMUP = 16  # measurements before the search's XGBoost model ranks candidates (TVM's default: 100)


def _search(task: Task, trials: int, target: Target, database, measurer: Measurer, on_batch, work_dir: Path) -> int:
    """Measure up to ``trials`` new schedules of a searched task (TVM's own kernels: tasks.GENERATED, over
    MetaSchedule's default rules; the CUDA fused blocks, over their own space) with MetaSchedule's
    evolutionary search, through the job's builder and runner, into
    ``database``. The task keeps one XGBoost cost model for the whole job (``measurer.cost_models``), trained
    on every round's measurements, and each round's initial population starts from the database's best
    records, so a job cut into rounds goes on where the last round stopped (a resumed job's model starts
    trained on the records already measured: ``trained_cost_model``; MetaSchedule may measure a schedule a
    previous round measured, counted as a trial). TVM's log
    goes to ``work_dir``/logs/. A search TVM can't run (a stored trace it can't post-process) ends the
    task's tuning with a warning instead of the job. Returns the trials added."""
    from tvm.s_tir import meta_schedule as ms

    from ..target import physical_cores
    from .intrinsics import import_tensor_intrinsics

    before = trials_done(database, task.workload)
    import_tensor_intrinsics()  # what TuneContext imports, in seconds instead of minutes
    context = ms.TuneContext(task.workload, target=target.tvm, space_generator=task.space(target),
                             search_strategy="evolutionary", task_name=task.name, num_threads=physical_cores(),
                             logger=_search_logger(work_dir, task.name))
    try:
        if task.name not in measurer.cost_models:
            measurer.cost_models[task.name] = trained_cost_model(context, database, task.workload)
        model = measurer.cost_models[task.name]
        ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=str(work_dir), max_trials_global=trials,
                      max_trials_per_task=trials, num_trials_per_iter=min(trials, ROUND), builder=measurer.builder,
                      runner=measurer.runner, database=database, cost_model=model)
    except Exception as e:  # noqa: BLE001 - TVM raises TVMError, ValueError, RuntimeError from its search
        logging.getLogger(__name__).warning("%s: MetaSchedule's search stopped (%s: %s); the task keeps the "
                                            "schedules measured so far", task.name, type(e).__name__, e)
        measurer.failed_searches.add(task.name)
    added = trials_done(database, task.workload) - before
    on_batch(added)
    return added


def trained_cost_model(context, database, workload):
    """A new XGBoost cost model for the task of ``context``, trained on the measured records of ``workload`` in
    ``database``: a resumed job with SEARCH_WARMUP usable records or more ranks candidates from its first
    round instead of measuring that many random ones again (with fewer, the model still ranks at random
    until it has them; records whose trace no longer applies are left out)."""
    from tvm.s_tir import meta_schedule as ms

    model = ms.cost_model.XGBModel(num_warmup_samples=SEARCH_WARMUP)
    candidates, results = [], []
    for record in database.get_top_k(database.commit_workload(workload), 1 << 30):
        seconds = [float(s) for s in record.run_secs]
        if not seconds or max(seconds) >= FAILED:
            continue
        try:
            candidates.append(record.as_measure_candidate())
        except Exception:  # noqa: BLE001 - a stored trace that no longer replays: nothing to learn from
            continue
        results.append(ms.runner.RunnerResult(seconds, None))
    if candidates:
        model.update(context, candidates, results)
    return model


def _search_logger(work_dir: Path, name: str) -> logging.Logger:
    """A logger writing to ``work_dir``/logs/<task>.log only (MetaSchedule's own helper also logs to stdout)."""
    path = (work_dir / "logs" / f"{name[:100]}.log").resolve()
    logger = logging.getLogger(f"convopt.tuning.search.{name}")
    if [getattr(h, "baseFilename", None) for h in logger.handlers] != [str(path)]:  # another job's folder
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _time_module(fast, args, seconds: float = 1.0) -> float:
    """Median milliseconds per call over about ``seconds`` of calls."""
    with torch.no_grad():
        fast(*args)
        times, deadline = [], time.perf_counter() + seconds
        while len(times) < 5 or time.perf_counter() < deadline:
            start = time.perf_counter()
            fast(*args)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


SWITCH_MARGIN = 1.02  # the measured lowerings stay when the model runs at most this much slower with them


def _alternately(untuned, tuned, args, rounds: int = 3) -> tuple[float, float]:
    """(untuned ms, tuned ms): both timed in alternation (the machine's load drifts during a job), the best
    round of each."""
    times = [(_time_module(untuned, args), _time_module(tuned, args)) for _ in range(rounds)]
    return min(t[0] for t in times), min(t[1] for t in times)


def _kernel_seconds(untuned, tuned, example_inputs, rounds: int = 2, runs: int = 15) -> tuple[dict, dict]:
    """(untuned, tuned): seconds per model run of each kernel inside the model (report.time_kernels), the two
    builds alternating, the best round of each kernel."""
    from ..report import time_kernels

    best: tuple[dict, dict] = ({}, {})
    for _ in range(rounds):
        for seconds, fast in zip(best, (untuned, tuned)):
            for row in time_kernels(fast, example_inputs, runs=runs, rounds=1)[0]:  # this loop alternates the builds
                seconds[row.name] = min(seconds.get(row.name, float("inf")), row.seconds)
    return best


def _lowering_changes(untuned: Graph, tuned: Graph) -> list[tuple[str, str, str]]:
    """(node, lowering in ``untuned``: the cost model's, lowering in ``tuned``: the measurements') of the nodes
    whose lowering differs."""
    before = untuned.node_map
    return [(n.name, before[n.name].attrs.lowering, n.attrs.lowering) for n in tuned.nodes
            if n.name in before and n.op is before[n.name].op and hasattr(n.attrs, "lowering")
            and n.attrs.lowering != before[n.name].attrs.lowering]


def _switched_shapes(untuned: Graph, tuned: Graph) -> set[str]:
    """ConvSpec keys of the convs whose lowering the measurements changed (``_lowering_changes``)."""
    specs = (conv_spec_of(tuned, tuned.node_map[name]) for name, *_ in _lowering_changes(untuned, tuned))
    return {spec.key() for spec in specs if spec is not None}


def _run(tasks: list[Task], database, measurer: Measurer, target: Target, *, trials: int | None,
         deadline: float | None, untuned_ms: float | None, progress: bool, work_dir: Path,
         rivals: list[list[Task]] = ()):
    """Steps 2-7 of the module docstring: (a TaskReport per task, new trials, why it stopped early or "").
    ``rivals``: groups of tasks that are lowerings of the same convs (rivals.rival_groups)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="measuring defaults", unit="task", disable=not progress, leave=False)
    stale = set()
    for task in tasks:
        if _commit_default(database, task, measurer, target):
            stale.add(task.name)
        bar.update()
    bar.close()
    times = {t.name: _times(database, t) for t in tasks}
    sizes = {t.name: t.size() for t in tasks}
    tunable = [t for t in tasks if sizes[t.name] > 1]  # a space of one point is its default: done
    costs = [t.weight * times[t.name][0] for t in tunable]
    budget = trials if trials is not None else TRIALS_PER_TASK * len(tunable)
    shares = {t.name: 0 for t in tasks}
    shares.update(zip((t.name for t in tunable), allocate(budget, costs, [sizes[t.name] - 1 for t in tunable])))
    # the default is not a tuned trial; a stale task's records were made for another default: its share is
    # owed again (the new default's neighbourhood was never searched)
    done = {t.name: 0 if t.name in stale else trials_done(database, t.workload, _readable(t)) - 1 for t in tasks}
    owed_total = sum(max(0, shares[n] - done[n]) for n in shares)

    exhausted, new_trials, stopped = set(), 0, ""
    spent = [0.0, 0]  # seconds and trials of the rounds so far (the time budget's estimate of a trial)
    touched = [t for t in tasks if t.name in stale]  # confirmed below: the old records beside the new default
    bar = tqdm(total=owed_total, desc="tuning", unit="trial", disable=not progress)

    def postfix(task: Task) -> None:
        default_us, best_us = times[task.name]
        saved = sum(t.weight * (times[t.name][0] - times[t.name][1]) for t in tasks if not t.alternative) / 1000
        bar.set_postfix_str(f"{task.name[:28]} best {best_us:.0f}/{default_us:.0f} us"
                            + (f", model ~{untuned_ms - saved:.2f} ms" if untuned_ms is not None else ""))

    while True:
        if deadline is not None and time.perf_counter() >= deadline:
            stopped = "time budget"
            break
        owing = [t for t in tasks if t.name not in exhausted and done[t.name] < shares[t.name]]
        if not owing:
            break
        task = min(owing, key=lambda t: (done[t.name] / shares[t.name], -t.weight * times[t.name][0]))
        chunk = round_size(shares[task.name] - done[task.name], None if deadline is None else
                           deadline - time.perf_counter(), spent[0] / spent[1] if spent[1] else None)
        postfix(task)
        started = time.perf_counter()
        if task.searched:
            added = _search(task, chunk, target, database, measurer, bar.update, work_dir)
        else:
            added = _enumerate(task, chunk, target, database, measurer, bar.update)
        if added:  # (a round that measured nothing, e.g. a failed search, says nothing about a trial's cost)
            spent[0], spent[1] = spent[0] + time.perf_counter() - started, spent[1] + added
        if added == 0 or task.name in measurer.failed_searches:
            exhausted.add(task.name)  # the space has no unmeasured candidates left, or its search failed
        else:
            touched.append(task)
        done[task.name] += added
        new_trials += added
        times[task.name] = _times(database, task)
    # even past the time budget: seconds per task, and without it a record may win by one lucky run
    bar.set_description("confirming")
    bar.total = bar.n + len(set(t.name for t in touched)) * (CONFIRM_TOP + 1) * CONFIRM_ROUNDS
    for task in {t.name: t for t in touched}.values():
        added = _confirm(task, database, measurer, target, bar.update)
        done[task.name] += added
        new_trials += added
    if rivals:  # the lowerings of one conv measured together: the choice compares times taken side by side
        bar.set_description("rival lowerings")
        bar.total = bar.n + sum(len(group) for group in rivals) * 2 * RECENT  # at most: default + record each
        new_trials += measure_rivals(rivals, TunedSchedules(target, [work_dir.parent]), database, measurer.run,
                                     lambda *args: _commit(*args, target), bar.update)
    bar.close()
    schedules = TunedSchedules(target, [work_dir.parent])  # the job's folder as optimize() reads it
    times = {t.name: _final_times(schedules, t) for t in tasks}

    reports = [TaskReport(t.name, t.kind, t.nodes, t.weight, done[t.name] + 1, *times[t.name], t.alternative)
               for t in tasks]
    return reports, new_trials, stopped


def _alternatives(graph, captured, target: Target, lowering: dict[str, str] | None, tasks: list[Task],
                  margin: float, fuse_blocks=True) -> list[tuple[Task, Any]]:
    """(task, its graph) for the kernels of the lowerings each conv of ``graph`` could also run: those the cost
    model predicts within ``margin`` of its best, each forced on the convs it is near the best for in one
    more run of the pipeline over ``captured``. Convs the user forced a lowering on are left alone; kernels
    equal to one in ``tasks`` are not repeated."""
    from ..cost.model import BLOCKED, near_best
    from ..pipeline import build, run_passes

    forced = dict(lowering or {})
    overrides: dict[str, dict[str, str]] = {}  # other lowering -> {node: lowering}
    for n in graph.nodes:
        if n.op is not Op.CONV2D or not n.attrs.predicted_us or n.name in forced or (n.scope or "") in forced:
            continue
        predicted = {name.removesuffix(BLOCKED): us for name, us in n.attrs.predicted_us}
        for other in near_best(predicted, margin):
            if other != n.attrs.lowering:
                overrides.setdefault(other, {})[n.name] = other
    seen = {tvm_ffi.structural_hash(t.workload) for t in tasks}
    names = {t.name for t in tasks}
    found = []
    for other, nodes in sorted(overrides.items()):
        alternative, _ = run_passes(captured, build("inference", target, lowering={**forced, **nodes},
                                                    fuse_blocks=fuse_blocks))
        for task in extract_tasks(alternative, target):
            digest = tvm_ffi.structural_hash(task.workload)
            if task.kind != other or not set(task.nodes) <= set(nodes) or digest in seen:
                continue
            seen.add(digest)
            name = task.name
            while name in names:
                name += "'"
            names.add(name)
            found.append((replace(task, name=name, alternative=True), alternative))
    return found


def _lowering_entries(reports: list[TaskReport], graphs: dict[str, Any]) -> dict:
    """lowering_times.json entries of the tuned conv kernels (lowering_times.py)."""
    entries: dict[str, dict] = {}
    for r in reports:
        if not is_conv_lowering(r.kind):
            continue
        for key, variant, epilogue in kernel_variants(graphs[r.name], r.kind, r.nodes):
            entries.setdefault(key, {}).setdefault(variant, {})[epilogue] = {
                "default_us": round(r.default_us, 3), "best_us": round(r.best_us, 3), "trials": r.trials}
    return entries


OTHER_OP_SHARE = 0.02  # other ops tuned on a CPU (tune(other_ops=True)): at least this share of the estimate


def heavy_other_ops(graph, target: Target, tasks: list[Task]) -> list[Task]:
    """TVM's own kernels of ``graph`` on a CPU ``target`` (tasks.generated_tasks) whose estimated time, FLOPs
    at the machine's roof plus arguments' bytes at its bandwidth, times calls, is at least ``OTHER_OP_SHARE``
    of the estimate of all of the model's kernels (``tasks``, convopt's, fused blocks included, by their FLOPs):
    the ones that can matter end to end. The dozens of small elementwise kernels keep their default rules."""
    from ..backends.tvm_backend import kernel_table
    from ..cost.profile import load_profile

    profile = load_profile(target)

    def seconds(task: Task, moves_bytes: bool) -> float:
        nbytes = kernel_table(task.workload)["main"]["bytes"] if moves_bytes else 0
        return task.weight * (task.flops / profile.roof_flops + nbytes / profile.bandwidth)

    others = generated_tasks(graph, target)
    total = sum(seconds(t, False) for t in tasks) + sum(seconds(t, True) for t in others)
    return [t for t in others if seconds(t, True) >= OTHER_OP_SHARE * total]


def job_tasks(graph, model: torch.nn.Module, example_inputs: Any, target: Target, *, lowering=None,
              lowering_margin: float = MEASURE_MARGIN, fuse_blocks=True, other_ops: bool = False):
    """(tasks, task name -> its graph, the alternatives' (task, graph), the captured graph or None): what a job
    on ``model`` measures, given ``graph``, the model after the pipeline (step 1 of the module docstring)."""
    tasks = extract_tasks(graph, target)
    if other_ops and target.is_cpu:
        tasks += heavy_other_ops(graph, target, tasks)
    graphs = {t.name: graph for t in tasks}
    alternatives, captured = [], None
    if target.is_cpu and not isinstance(lowering, str):  # one lowering forced everywhere: no choice to tune
        from ..capture import capture_program

        captured = capture_program(model, example_inputs, mode="inference").graph
        alternatives = _alternatives(graph, captured, target, lowering, tasks, lowering_margin, fuse_blocks)
        for task, alternative_graph in alternatives:
            tasks.append(task)
            graphs[task.name] = alternative_graph
    return tasks, graphs, alternatives, captured


def prune_records(models: list[tuple[torch.nn.Module, Any]], *, target: Any = None, log_dir: str | Path | None = None,
                  lowering=None, lowering_margin: float = MEASURE_MARGIN, fuse_blocks=True, other_ops: bool = False,
                  dry_run: bool = False):
    """Keep in ``target``'s records under ``log_dir`` (default ./tuning_logs) only the workloads a job on one of
    ``models`` ((model, example inputs) pairs) would tune with the same options: the records of kernels whose
    code has changed since (they never apply again) and of models no longer listed go (records.prune).
    (Every lowering of every conv would keep more, but building their kernels to find the workloads takes
    gigabytes: the FFT lowering's transformed weights alone are hundreds of MB for one of resnet50's convs.)"""
    import gc

    import tvm_ffi

    from ..capture import capture_program
    from ..pipeline import build, run_passes
    from .records import prune

    from ..optimize import _measured_lowerings

    target = resolve_target(target if target is not None else "cpu")
    log_root = Path(log_dir) if log_dir is not None else LOCAL_LOGS
    measured = _measured_lowerings(target, log_root)
    keep: set[str] = set()
    for model, example_inputs in models:
        captured = capture_program(model, example_inputs, mode="inference").graph
        graph, _ = run_passes(captured, build("inference", target, lowering=lowering, fuse_blocks=fuse_blocks))
        tasks, *_ = job_tasks(graph, model, example_inputs, target, lowering=lowering,
                              lowering_margin=lowering_margin, fuse_blocks=fuse_blocks, other_ops=other_ops)
        # and the kernels optimize() runs: the lowerings these folders' measurements choose (lowering_times.json),
        # which the cost model may no longer predict near the best
        chosen, _ = run_passes(captured, build("inference", target, lowering=lowering, fuse_blocks=fuse_blocks,
                                               measured=measured))
        tasks += extract_tasks(chosen, target)
        keep.update(str(tvm_ffi.structural_hash(t.workload)) for t in tasks)
        del captured, graph, chosen, tasks
        gc.collect()  # one model's graphs and kernels at a time
    return prune(target, log_root, keep, dry_run=dry_run)


def tune(model: torch.nn.Module, example_inputs: Any, *, target: Any = None, trials: int | None = None,
         time_budget: str | float | None = None, log_dir: str | Path | None = None, rpc: str | None = None,
         lowering: str | dict[str, str] | None = None, lowering_margin: float = MEASURE_MARGIN,
         fuse_blocks: bool | dict[str, bool] = True, progress: bool = True,
         measure_end_to_end: bool = True, other_ops: bool = False) -> TuningSummary:
    """Tune the kernels of ``model`` on ``target`` (default "cpu") and keep the records under
    ``log_dir/<target key>/`` (default ./tuning_logs); optimize() applies them afterwards (give it
    ``tuning_logs=log_dir`` when that is not ./tuning_logs or $CONVOPT_TUNING_LOGS).

    trials: the tuned trials of the whole job (default 64 per task), shared by the tasks in proportion
    to their time; time_budget: stop after this long (seconds, or "15m", "1h"); rpc: "HOST:PORT:KEY" of a
    TVM RPC tracker to measure on; lowering: as in optimize() (a record applies to the graph it was tuned
    for: optimize with the same lowering); lowering_margin: the lowerings predicted within this factor of
    each conv's best are tuned too, and optimize() runs the fastest measured (1: none; a large factor: every
    lowering that can run the conv); fuse_blocks: as in optimize() (the fused kernels are tasks too);
    other_ops: on a CPU, also tune TVM's own kernels for the other ops (pooling, norms, elementwise chains)
    whose estimated time is at least ``OTHER_OP_SHARE`` of the model's, searched with MetaSchedule's default
    x86 rules. On CUDA every kernel is TVM's own and searched with its CUDA rules (tasks.py), except the
    blocks ``fuse_blocks={...: True}`` fuses, whose kernel's space is searched too; measuring needs a GPU
    here or ``rpc``. A job started again on the same model resumes.
    """
    from ..capture import as_args, capture_program
    from ..optimize import optimize
    from ..pipeline import build, run_passes

    target = resolve_target(target if target is not None else "cpu")
    if not target.runs_here and rpc is None:
        raise RuntimeError(f"tuning target {target.key}: this machine can't run its kernels "
                           f"({'no CUDA device' if not target.is_cpu else 'another ISA'}); measure on machines "
                           "that can through TVM's RPC tracker: rpc='HOST:PORT:KEY' (convopt tune --rpc)")
    budget_s = parse_duration(time_budget)
    start = time.perf_counter()
    args = as_args(example_inputs)
    if target.runs_here:
        fast = optimize(model, example_inputs, target=target, lowering=lowering, tuning_logs=False,
                        fuse_blocks=fuse_blocks)
        graph = fast.graph
    else:  # nothing runs here: the graph is all a job needs
        fast = None
        graph, _ = run_passes(capture_program(model, example_inputs, mode="inference").graph,
                              build("inference", target, lowering=lowering, fuse_blocks=fuse_blocks))
    # through RPC the kernels run elsewhere: this machine's end-to-end time would say nothing about them
    measure_end_to_end = measure_end_to_end and target.runs_here and rpc is None
    untuned_ms = _time_module(fast, args) if measure_end_to_end else None
    tasks, graphs, alternatives, captured = job_tasks(graph, model, example_inputs, target, lowering=lowering,
                                                      lowering_margin=lowering_margin, fuse_blocks=fuse_blocks,
                                                      other_ops=other_ops)
    log_root = Path(log_dir) if log_dir is not None else LOCAL_LOGS
    database = open_database(target, log_root, create=True)
    if database is None:
        raise RuntimeError(f"the tuning records under {records_dir(target, log_root)} are unusable (see the "
                           "warning); move them away to tune again")
    folder = records_dir(target, log_root)
    measurer = Measurer(target, rpc)
    try:
        reports, new_trials, stopped = _run(tasks, database, measurer, target, trials=trials,
                                            deadline=None if budget_s is None else start + budget_s,
                                            untuned_ms=untuned_ms, progress=progress, work_dir=folder,
                                            rivals=rival_groups(tasks, graphs))
    finally:
        measurer.close()
    write_times(folder, target, _lowering_entries(reports, graphs))
    seconds = time.perf_counter() - start
    summary = TuningSummary(target.key, folder, reports, new_trials, seconds, untuned_ms, stopped=stopped,
                            per_trial_s=seconds / new_trials if new_trials else 0.0,
                            alternatives=len(alternatives))
    if measure_end_to_end:
        def tuned_build(confirmed_only: bool = True):
            schedules = TunedSchedules(target, default_log_dirs(log_root), confirmed_only=confirmed_only)
            return optimize(model, example_inputs, target=target, lowering=lowering, tuning_logs=schedules,
                            fuse_blocks=fuse_blocks)

        # first every kernel's best record runs, those set aside by earlier jobs too: each tuned kernel is timed
        # in the model against its default and the observation kept (in_model.py); the verdict is the median of
        # the latest jobs', so one noisy comparison doesn't set a schedule aside for good
        tuned = tuned_build(confirmed_only=False)
        kernels = tuned._compiled.kernels
        if any(row.get("tuning", {}).get("status") == "tuned" for row in kernels.values()):  # else nothing to time
            observed = observe(*_kernel_seconds(fast, tuned, example_inputs), kernels)
            kept = record_observations(folder, observed)
            aside = sum(len(ids) for ids in set_aside({w: {r: kept[w][r] for r in records}
                                                       for w, records in observed.items()}).values())
            summary.rejected_in_model = (aside, sum(len(records) for records in observed.values()))
            if aside:  # tuned kernels that were not faster inside the model than their defaults: defaults run
                tuned = tuned_build()
        summary.untuned_ms, summary.tuned_ms = _alternately(fast, tuned, args)
        switched = _switched_shapes(graph, tuned.graph)
        if switched and summary.tuned_ms > SWITCH_MARGIN * summary.untuned_ms:  # measured again before deciding:
            # a slow phase of the host during one check read mobilenetv2_100 tuned 2.39 ms, untuned 1.73 (session 36)
            summary.untuned_ms, summary.tuned_ms = _alternately(fast, tuned, args, rounds=5)
        if switched and summary.tuned_ms > SWITCH_MARGIN * summary.untuned_ms:
            # kernels measured alone chose lowerings the whole model runs slower with (resnet18 on an Intel
            # AVX-512 host: 9.0 untuned, 9.7 ms with them, 9.0 with the tuned schedules alone): the cost model
            # chooses those convs' lowerings again, so that tuning never makes the model slower
            slower = summary.tuned_ms
            forget(folder, target, switched)
            tuned = tuned_build()
            summary.untuned_ms, summary.tuned_ms = _alternately(fast, tuned, args)
            summary.rejected_switches = (len(switched), slower)
        if summary.rejected_in_model:  # observations may set schedules aside, or bring them back
            schedules = TunedSchedules(target, [log_root])  # the tasks' times as optimize() now chooses
            summary.tasks = [replace(report, **dict(zip(("default_us", "best_us"), _final_times(schedules, task))))
                             for report, task in zip(summary.tasks, tasks)]
        chosen = tuned.graph
    else:
        chosen = graph
        if alternatives:  # what optimize() will choose, without compiling the model
            from ..optimize import _measured_lowerings
            from ..pipeline import build, run_passes

            chosen, _ = run_passes(captured, build("inference", target, lowering=lowering, fuse_blocks=fuse_blocks,
                                                   measured=_measured_lowerings(target, log_root)))
    pack(folder)
    summary.lowering_changes = _lowering_changes(graph, chosen)
    return summary
