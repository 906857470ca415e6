"""Tuned kernels confirmed inside the model: a record whose kernel runs slower there than its default is set aside.

A tuning job measures each kernel alone, on warm caches, its inputs the same every call. In the model its
input was just written by the kernel before (partly by the other cores) and its weights come from L3, and a
schedule that wins alone can lose there: on an Intel AVX-512 VM, 6 of resnet50's 11 tuned kernels ran 3-20%
slower in the model than their defaults (5 faster; 1.5% slower in all). So after the search the job times every
kernel in the untuned build and in a tuned build that runs every kernel's best record, set aside or not (the
VM's instrument, report.time_kernels; the two builds alternating), and keeps each tuned kernel's two times
beside the records, the latest ``KEEP`` observations per record:

    {"<workload structural hash>": {"<record id>": {"observations": [[default_us, tuned_us], ...]}}}

A record is set aside while the median of its observed tuned / default ratios is 1 or more: its kernel was not
faster in the model. ``TunedSchedules.schedule`` (apply.py) leaves set-aside schedules out, so the kernel runs
its next-best record or its default. Deciding on the median of several jobs' observations, each job measuring
the set-aside records again, keeps one noisy comparison from setting a schedule aside for good (sessions
before 37 kept a single observation: on a host whose slow phases swing kernels by 5-10%, 112 records set
aside on Zen 5, half of them within 4% of their defaults). A record never changes results, only speed; the
file only ever makes a kernel run its default.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import warnings
from pathlib import Path

REJECTED = "in_model.json"
KEEP = 5  # observations kept per record: the latest jobs', so that a schedule's verdict follows the machine


def record_id(key: str) -> str:
    """A short stable name of a stored record's schedule (its trace as stored JSON: apply.py groups by it)."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def observe(untuned: dict[str, float], tuned: dict[str, float], kernels: dict[str, dict]) -> dict:
    """{workload: {record id: (default us, tuned us)}} of each kernel that ran a tuned schedule: ``untuned`` /
    ``tuned``: seconds per model run of each kernel (by PrimFunc name) in the two builds; ``kernels``: the tuned
    build's kernel table (tvm_backend.kernel_table), whose "tuning" rows name each tuned kernel's workload and
    record. Kernels that didn't run under the same name in both builds are left out."""
    observed: dict[str, dict] = {}
    for name, row in kernels.items():
        tuning = row.get("tuning") or {}
        if tuning.get("status") != "tuned" or not tuning.get("workload") or name not in untuned or name not in tuned:
            continue
        observed.setdefault(tuning["workload"], {})[tuning["record"]] = (untuned[name] * 1e6, tuned[name] * 1e6)
    return observed


def observations(entry: dict) -> list[tuple[float, float]]:
    """A record's (default us, tuned us) observations, oldest first (a file written before session 37 holds
    one pair per record, as "default_us" and "tuned_us")."""
    if "observations" in entry:
        return [(float(d), float(t)) for d, t in entry["observations"]]
    if "default_us" in entry and "tuned_us" in entry:
        return [(float(entry["default_us"]), float(entry["tuned_us"]))]
    return []


def is_set_aside(entry: dict) -> bool:
    """Whether a record's kernel was not faster in the model than its default, by the median of its ratios."""
    pairs = [(d, t) for d, t in observations(entry) if d > 0]
    return bool(pairs) and statistics.median(t / d for d, t in pairs) >= 1.0


def set_aside(data: dict) -> dict[str, set[str]]:
    """{workload: record ids set aside} of a file's contents (``read_rejected``)."""
    return {workload: aside for workload, records in data.items()
            if (aside := {rid for rid, entry in records.items() if is_set_aside(entry)})}


def read_rejected(folder: Path) -> dict:
    """The in-model observations kept in ``folder`` (empty when none; a damaged file is skipped with a warning)."""
    path = Path(folder) / REJECTED
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, dict) and all(isinstance(e, dict) for e in v.values())
                                                 for v in data.values()):
            raise ValueError("not a mapping of workloads to records")
        for records in data.values():
            for entry in records.values():
                observations(entry)  # numbers, in pairs
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        warnings.warn(f"{path} skipped ({e}): the tuned schedules it set aside may run again; delete it or run "
                      "`convopt tune` on the model again", stacklevel=2)
        return {}
    return data


def record_observations(folder: Path, observed: dict) -> dict:
    """Add ``observed`` (``observe``) to the folder's file, each record keeping its latest ``KEEP``; returns the
    file's new contents."""
    merged = read_rejected(folder)
    for workload, records in observed.items():
        for rid, pair in records.items():
            entry = merged.setdefault(workload, {}).get(rid, {})
            kept = (observations(entry) + [tuple(pair)])[-KEEP:]
            merged[workload][rid] = {"observations": [[round(d, 3), round(t, 3)] for d, t in kept]}
    path = Path(folder) / REJECTED
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
    tmp.replace(path)  # whole or not at all: a kill mid-write leaves the old file
    return merged
