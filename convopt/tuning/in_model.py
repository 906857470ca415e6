"""Tuned kernels confirmed inside the model: a record whose kernel runs slower there than its default is set aside.

A tuning job measures each kernel alone, on warm caches, its inputs the same every call. In the model its
input was just written by the kernel before (partly by the other cores) and its weights come from L3, and a
schedule that wins alone can lose there: on an Intel AVX-512 VM, 6 of resnet50's 11 tuned kernels ran 3-20%
slower in the model than their defaults (5 faster; 1.5% slower in all). So after the search the job times every
kernel in the untuned and in the tuned build of the model (the VM's instrument, report.time_kernels; the two
builds alternating), and for each kernel that ran its tuned schedule and was not faster in the model than its
default, records that schedule in ``REJECTED`` beside the records:

    {"<workload structural hash>": {"<record key>": {"default_us": .., "tuned_us": ..}}}    (per model run)

``TunedSchedules.schedule`` (apply.py) leaves those schedules out: the kernel runs its next-best record or its
default. A record never changes results, only speed; the file only ever makes a kernel run its default.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

REJECTED = "in_model.json"


def record_id(key: str) -> str:
    """A short stable name of a stored record's schedule (its trace as stored JSON: apply.py groups by it)."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def slower_in_model(untuned: dict[str, float], tuned: dict[str, float], kernels: dict[str, dict]) -> dict:
    """The schedules to set aside: ``untuned`` / ``tuned``: seconds per model run of each kernel (by PrimFunc
    name) in the two builds; ``kernels``: the tuned build's kernel table (tvm_backend.kernel_table), whose
    "tuning" rows name each tuned kernel's workload and record. A kernel counts when it ran a tuned schedule,
    both builds ran it under the same name, and it was not faster in the model."""
    rejected: dict[str, dict] = {}
    for name, row in kernels.items():
        tuning = row.get("tuning") or {}
        if tuning.get("status") != "tuned" or not tuning.get("workload") or name not in untuned or name not in tuned:
            continue
        if tuned[name] >= untuned[name]:
            rejected.setdefault(tuning["workload"], {})[tuning["record"]] = {
                "default_us": untuned[name] * 1e6, "tuned_us": tuned[name] * 1e6}
    return rejected


def read_rejected(folder: Path) -> dict:
    """The schedules set aside in ``folder`` (empty when none; a damaged file is skipped with a warning)."""
    path = Path(folder) / REJECTED
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("not a mapping of workloads to records")
    except (ValueError, UnicodeDecodeError) as e:
        warnings.warn(f"{path} skipped ({e}): the tuned schedules it set aside may run again; delete it or run "
                      "`convopt tune` on the model again", stacklevel=2)
        return {}
    return data


def reject(folder: Path, rejected: dict) -> None:
    """Add ``rejected`` (slower_in_model) to the folder's file."""
    merged = read_rejected(folder)
    for workload, records in rejected.items():
        merged.setdefault(workload, {}).update(records)
    path = Path(folder) / REJECTED
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
    tmp.replace(path)  # whole or not at all: a kill mid-write leaves the old file
