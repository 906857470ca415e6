"""Tuning records: one MetaSchedule ``JSONDatabase`` per target, in ``<log dir>/<target key>/``.

    tuning_logs/llvm-znver4-avx512-bf16-vnni-2c/database_workload.json.gz    one workload (PrimFunc) a line
    tuning_logs/llvm-znver4-avx512-bf16-vnni-2c/database_tuning_record.json  [workload index, [trace,
                                                                             run seconds, target, args]]

The workload file is packed with gzip between jobs (``pack``; a Winograd PrimFunc is megabytes of JSON) and
unpacked when a job opens the folder (``open_database``: TVM's JSONDatabase appends to plain files).
optimize() reads either form without TVM's database (``RecordIndex``: it parses only the workloads the
model's kernels ask for).

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

import gzip
import json
import os
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..target import Target, resolve_target

WORKLOADS = "database_workload.json"
PACKED = WORKLOADS + ".gz"
RECORDS = "database_tuning_record.json"
FAILED = 1e10  # MetaSchedule's run time of a candidate that failed to build or run
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


def workloads_file(folder: Path) -> Path:
    """The folder's workload file: plain while a job writes it, gzip-packed after (``pack``)."""
    plain = Path(folder) / WORKLOADS
    return plain if plain.is_file() or not (folder / PACKED).is_file() else Path(folder) / PACKED


def pack(folder: Path) -> None:
    """Compress the folder's workload file (each workload is a whole PrimFunc as base64 JSON: megabytes for a
    Winograd kernel, 20x smaller packed). Atomic: a kill at any point leaves one whole copy, plain or packed."""
    plain, packed = Path(folder) / WORKLOADS, Path(folder) / PACKED
    if not plain.is_file():
        return
    partial = packed.with_suffix(".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
        out.write(plain.read_bytes())  # mtime 0: the same records pack to the same bytes (no spurious diffs)
    os.replace(partial, packed)
    plain.unlink()


def unpack(folder: Path) -> None:
    """The inverse of ``pack``, before a job appends to the folder (TVM's JSONDatabase writes plain files)."""
    plain, packed = Path(folder) / WORKLOADS, Path(folder) / PACKED
    if plain.is_file() or not packed.is_file():
        return
    partial = plain.with_suffix(".partial")
    partial.write_bytes(gzip.decompress(packed.read_bytes()))
    os.replace(partial, plain)
    packed.unlink()


def _lines(path: Path) -> list[str]:
    """The file's lines, a torn last line dropped (and the file rewritten without it, with a warning)."""
    if path.suffix == ".gz":  # written whole by pack(): no torn line
        try:
            return [line for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise CorruptRecords(f"{path}: not a readable gzip file ({e}); move it away to tune again") from None
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


def _workload(path: Path, line: str, number: int):
    """A workload line, ["<structural hash>","<base64 of the PrimFunc's JSON>"] as TVM writes it, split without
    a JSON parse (lines are up to megabytes); any other form goes through the JSON parser."""
    head, sep, tail = line.partition('","')
    if sep and head.startswith('["') and tail.endswith('"]') and line.count('"') == 4 and "\\" not in line:
        return [head[2:], tail[:-2]]
    return _parse(path, line, number)


def check(folder: Path, target: Target) -> int:
    """Repair torn last lines of ``folder``'s record files and check the rest; the number of records.
    Raises CorruptRecords naming the file."""
    return len(_read(folder, target)[1])


def _read(folder: Path, target: Target) -> tuple[list, list]:
    """(workloads, records) of ``folder`` as parsed JSON, torn last lines repaired, checked (see check)."""
    source = workloads_file(folder)
    workloads = [_workload(source, line, i) for i, line in enumerate(_lines(source), 1)]
    for i, workload in enumerate(workloads, 1):
        if not (isinstance(workload, list) and len(workload) == 2 and all(isinstance(v, str) for v in workload)):
            raise CorruptRecords(f"{source}: line {i} is not a MetaSchedule workload")
    records = []
    for i, line in enumerate(_lines(folder / RECORDS), 1):
        record = _parse(folder / RECORDS, line, i)
        records.append(record)
        if not (isinstance(record, list) and len(record) == 2 and isinstance(record[0], int)
                and isinstance(record[1], list) and len(record[1]) >= 3):
            raise CorruptRecords(f"{folder / RECORDS}: line {i} is not a MetaSchedule tuning record")
        if not 0 <= record[0] < len(workloads):
            raise CorruptRecords(f"{folder / RECORDS}: line {i} names workload {record[0]}, but "
                                 f"{source} has {len(workloads)}")
        made_for = record[1][2]
        if _code_target(made_for) != _code_target(json.loads(str(target.tvm))):
            raise CorruptRecords(f"{folder / RECORDS}: line {i} was tuned for target {_describe(made_for)}, not "
                                 f"{target.key}; records of each target belong in their own folder "
                                 "<log dir>/<target key>/")
    return workloads, records


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
    unpack(folder)
    return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=True)


@dataclass(frozen=True)
class Pruned:
    """What ``prune`` kept and dropped."""

    workloads_kept: int
    workloads_dropped: int
    records_kept: int
    records_dropped: int


def prune(target: Target, log_dir: str | Path | None, keep, *, dry_run: bool = False) -> Pruned:
    """Drop from ``target``'s records under ``log_dir`` every workload whose structural hash is not among
    ``keep`` (IRModules, or their ``tvm_ffi.structural_hash`` as strings: the kernels still in use, e.g. the
    tasks of the models the records are for), with its records; the rest keep their order. (A hash shared by
    two different kernels could only keep a stale workload, never drop one in use.) Records of kernels whose
    code changed since they were tuned are never applied again (their workload no longer matches) but stay
    in the files: this is how they go. The files are rewritten atomically (the workloads packed again);
    ``dry_run`` only counts."""
    import re

    import tvm_ffi

    folder = records_dir(target, log_dir)
    workloads, _ = _read(folder, target)  # checked: a corrupt folder raises CorruptRecords, naming the file
    hashes = {k if isinstance(k, str) else str(tvm_ffi.structural_hash(k)) for k in keep}
    kept = [i for i, (shash, _) in enumerate(workloads) if shash in hashes]
    renumber = {old: new for new, old in enumerate(kept)}
    lines = _lines(folder / RECORDS)
    index_of = re.compile(r"\[(\d+),")
    records = []
    for line in lines:
        match = index_of.match(line)
        if match and int(match.group(1)) in renumber:
            records.append(f"[{renumber[int(match.group(1))]},{line[match.end():]}")
    result = Pruned(len(kept), len(workloads) - len(kept), len(records), len(lines) - len(records))
    if dry_run or not (result.workloads_dropped or result.records_dropped):
        return result
    source = workloads_file(folder)
    kept_lines = [line for i, line in enumerate(_lines(source)) if i in renumber]
    for path, text in ((folder / WORKLOADS, kept_lines), (folder / RECORDS, records)):
        partial = path.with_suffix(".partial")
        partial.write_text("".join(line + "\n" for line in text))
        os.replace(partial, path)
    if source.suffix == ".gz":
        source.unlink()  # the plain file written above replaces it, packed again below
    pack(folder)
    return result


@dataclass
class StoredRecord:
    """One measurement of a schedule as stored: ``key`` (its trace as stored JSON: equal for equal schedules
    in files TVM wrote) and mean seconds; ``trace()`` parses it (milliseconds: done only when needed)."""

    key: str
    seconds: float
    _body: list
    _workload: object

    def trace(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.database.TuningRecord.from_json(self._body, self._workload).trace


class RecordIndex:
    """A target's record folder read for lookups (optimize()), not for writing (a tuning job's
    JSONDatabase): the files are checked as open_database does, but a workload is parsed only when a kernel
    with its structural hash asks for it, and its records stay JSON until chosen. Opening TVM's
    JSONDatabase parses every workload and record in the folder (seconds for three models' records)."""

    def __init__(self, folder: Path, target: Target):
        self.folder = Path(folder)
        self._workloads, records = _read(self.folder, target)
        self._by_hash: dict[str, list[int]] = {}
        for i, (shash, _) in enumerate(self._workloads):
            self._by_hash.setdefault(shash, []).append(i)
        self._records: dict[int, list[list]] = {}
        for index, body in records:
            self._records.setdefault(index, []).append(body)
        self._parsed: dict[int, object] = {}

    def records(self, mod) -> list[StoredRecord]:
        """The measured (not failed) records of workload ``mod`` (an IRModule), in file order."""
        import tvm_ffi
        from tvm.s_tir import meta_schedule as ms

        for i in self._by_hash.get(str(tvm_ffi.structural_hash(mod)), []):
            if i not in self._parsed:
                self._parsed[i] = ms.database.Workload.from_json(self._workloads[i])
            workload = self._parsed[i]
            if tvm_ffi.structural_equal(workload.mod, mod):
                return [StoredRecord(json.dumps(body[0]), statistics.fmean(body[1]), body, workload)
                        for body in self._records.get(i, []) if body[1] and max(body[1]) < FAILED]
        return []


def read_index(target: Target, log_dir: str | Path | None = None) -> RecordIndex | None:
    """The RecordIndex of ``target``'s folder under ``log_dir``; None when there is none or it is unusable
    (with a warning naming the file)."""
    folder = records_dir(target, log_dir)
    if not (folder / RECORDS).is_file():
        return None
    try:
        return RecordIndex(folder, target)
    except CorruptRecords as e:
        warnings.warn(f"tuning records skipped: {e}", stacklevel=2)
        return None


def trials_done(database, mod, counts=None) -> int:
    """How many records ``database`` has for the workload ``mod`` (an IRModule), those of candidates that
    failed to build or run included: the trials a resumed job has already measured. ``counts``: a test of a
    record's trace, the records it refuses not counted (a written-out kernel's records of another version of
    its generator: apply.generator_reads)."""
    if database is None or not database.has_workload(mod):
        return 0
    token = database.commit_workload(mod)
    return sum(1 for r in database.get_all_tuning_records()
               if r.workload.same_as(token) and (counts is None or counts(r.trace)))
