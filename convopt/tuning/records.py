"""Tuning records: one MetaSchedule ``JSONDatabase`` per target, in ``<log dir>/<target key>/``.

    tuning_logs/llvm-znver4-avx512-bf16-vnni-2c/database_workload.json       one workload (PrimFunc) a line
    tuning_logs/llvm-znver4-avx512-bf16-vnni-2c/database_tuning_record.json  [workload index, [trace,
                                                                             run seconds, target, args]]

The key is ``Target.key`` (kind, CPU, the ISA features that change code, cores). TVM's database ignores the
target when it is queried (TVM issue 15549), so each target gets its own folder, and records are applied
only from the folder of the exact key: a schedule tuned on another machine is correct here but was chosen
for another ISA or core count, and the kernels themselves differ (weights are packed for the SIMD width),
so using it silently would make speed depend on whose logs happen to be around. ``other_keys`` lists the
targets that do have records, for the message that says so.

Reading is defensive, because a tuning job may be killed at any moment:
- a torn last line (a kill during a write) is dropped with a warning, and the file rewritten without it;
- a file with any other line that is not a record, a record naming a workload the workload file lacks,
  or a record made for another target key, makes the folder unusable: it is skipped with a warning naming
  the file and the reason, never deleted.
``trials_done`` counts a task's records: a resumed job runs only the trials it still owes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..target import Target, resolve_target

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
SHIPPED_LOGS = Path(__file__).resolve().parents[2] / "tuning_logs"  # the repository's tuning_logs/


class CorruptRecords(ValueError):
    """A record file convopt can't use; the message names the file and what is wrong with it."""


def records_dir(target: Target, log_dir: str | Path | None = None) -> Path:
    return Path(log_dir if log_dir is not None else SHIPPED_LOGS) / target.key


def other_keys(target: Target, log_dir: str | Path | None = None) -> list[str]:
    """Target keys other than ``target``'s with records under ``log_dir``."""
    root = Path(log_dir if log_dir is not None else SHIPPED_LOGS)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != target.key and (p / RECORDS).is_file())


def _lines(path: Path) -> list[str]:
    """The file's lines, a torn last line dropped (and the file rewritten without it, with a warning)."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            warnings.warn(f"{path}: dropped a torn last line (a tuning job was killed while writing it); "
                          "the records before it are kept", stacklevel=3)
            lines = lines[:-1]
            path.write_text("".join(line + "\n" for line in lines))
    return lines


def _parse(path: Path, line: str, number: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise CorruptRecords(f"{path}: line {number} is not JSON; move the file away (or delete it) to tune "
                             "again") from None


def check(folder: Path, target: Target) -> int:
    """Repair torn last lines of ``folder``'s record files and check the rest; the number of records.
    Raises CorruptRecords naming the file."""
    workloads = [_parse(folder / WORKLOADS, line, i) for i, line in enumerate(_lines(folder / WORKLOADS), 1)]
    for i, workload in enumerate(workloads, 1):
        if not (isinstance(workload, list) and len(workload) == 2 and all(isinstance(v, str) for v in workload)):
            raise CorruptRecords(f"{folder / WORKLOADS}: line {i} is not a MetaSchedule workload")
    records = _lines(folder / RECORDS)
    for i, line in enumerate(records, 1):
        record = _parse(folder / RECORDS, line, i)
        if not (isinstance(record, list) and len(record) == 2 and isinstance(record[0], int)
                and isinstance(record[1], list) and len(record[1]) >= 3):
            raise CorruptRecords(f"{folder / RECORDS}: line {i} is not a MetaSchedule tuning record")
        if not 0 <= record[0] < len(workloads):
            raise CorruptRecords(f"{folder / RECORDS}: line {i} names workload {record[0]}, but "
                                 f"{folder / WORKLOADS} has {len(workloads)}")
        made_for = record[1][2]
        if _code_target(made_for) != _code_target(json.loads(str(target.tvm))):
            raise CorruptRecords(f"{folder / RECORDS}: line {i} was tuned for target {_describe(made_for)}, not "
                                 f"{target.key}; records of each target belong in their own folder "
                                 "<log dir>/<target key>/")
    return len(records)


_CODE_FIELDS = ("kind", "mcpu", "mattr", "num-cores", "arch")  # what the generated code depends on


def _code_target(target_json) -> tuple:
    return tuple(str(target_json.get(f, "")) for f in _CODE_FIELDS) if isinstance(target_json, dict) else ()


def _describe(target_json) -> str:
    try:
        return resolve_target(dict(target_json)).key
    except Exception:  # noqa: BLE001 - whatever TVM makes of a damaged target, it isn't this one
        return f"an unreadable target ({json.dumps(target_json)[:60]})"


def open_database(target: Target, log_dir: str | Path | None = None, *, create: bool = False):
    """The JSONDatabase of ``target`` under ``log_dir`` (default: the shipped tuning_logs/), checked and
    repaired; None when there is none (``create``: make an empty one) or it is unusable (with a warning)."""
    from tvm.s_tir import meta_schedule as ms

    folder = records_dir(target, log_dir)
    if not (folder / RECORDS).is_file() and not create:
        return None
    try:
        check(folder, target)
    except CorruptRecords as e:
        warnings.warn(f"tuning records skipped: {e}", stacklevel=2)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=True)


def trials_done(database, mod) -> int:
    """How many records ``database`` has for the workload ``mod`` (an IRModule), those of candidates that
    failed to build or run included: the trials a resumed job has already measured."""
    if database is None or not database.has_workload(mod):
        return 0
    token = database.commit_workload(mod)
    return sum(1 for r in database.get_all_tuning_records() if r.workload.same_as(token))
