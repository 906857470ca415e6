"""Measured times of conv lowerings by conv shape: what a tuning job learned about which lowering is fastest,
kept beside its records and read by optimize() to choose lowerings (passes/select_lowering.py) and by
``convopt calibrate --from-logs`` to refit the cost model (cost/calibrate.py).

    tuning_logs/<target key>/lowering_times.json
    {"format": "convopt-lowering-times-1", "target": "<target key>",
     "convs": {"<ConvSpec.key()>": {"<lowering>[@blocked]": {"relu+residual": {"default_us": 812.0,
                                                                              "best_us": 745.1, "trials": 40}}}}}

An entry is one kernel as it ran in the tuned model: its lowering, "@blocked" when it read and wrote blocked
tensors (NCHW[lanes]c), "@blocked-output" when it read an NCHW input and wrote a blocked output (a stem:
select_lowering compares those where its readers are blocked; not used to refit the cost model, which has
no coefficients for that mix), none with a blocked input and an NCHW output (nothing looks that up), its
fused epilogue (the activation, "+residual" when it adds one), its default schedule's time
and its fastest schedule's time, both as apply.choose picks them from the records (medians over repeated
measurements), so the entry says what optimize() will run. Lowerings are compared on equal epilogues
(cost/model.measured_all). The file is a summary of the records, rewritten after each job; a corrupt or
foreign one is ignored with a warning naming it (the records themselves stay usable).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable

from ..cost.model import BLOCKED, BLOCKED_OUTPUT
from ..ir.graph import Graph
from ..ir.layout import block_of
from ..schedules.conv_spec import ConvSpec, conv_spec_of
from ..target import Target
from .records import records_dir

TIMES = "lowering_times.json"
FORMAT = "convopt-lowering-times-1"

Table = dict[str, dict[str, dict[str, dict[str, float]]]]  # spec -> variant -> epilogue -> {"default_us", ...}


def read_times(folder: Path, target: Target) -> Table:
    """The table in ``folder`` (a target's records folder); {} when there is none or it is unusable."""
    path = Path(folder) / TIMES
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if data.get("target") != target.key:
            raise ValueError(f"made for target {data.get('target')!r}, not {target.key}")
        convs = data["convs"]
        for entry in _entries(convs):
            if not (float(entry[3]["best_us"]) > 0 and float(entry[3]["default_us"]) > 0):
                raise ValueError(f"an entry with non-positive times: {entry}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"ignoring {path}: {e}. Lowerings are chosen by the cost model; the next `convopt tune` "
                      "rewrites it", stacklevel=3)
        return {}
    return convs


def write_times(folder: Path, target: Target, entries: Table) -> Path:
    """Merge ``entries`` into the folder's table (a new entry replaces the old one of its shape and variant)
    and write it atomically: a job killed while writing leaves the old file whole."""
    folder = Path(folder)
    table = read_times(folder, target)
    for key, variant, epilogue, entry in _entries(entries):
        table.setdefault(key, {}).setdefault(variant, {})[epilogue] = entry
    return _write(folder, target, table)


def _write(folder: Path, target: Target, table: Table) -> Path:
    path = folder / TIMES
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"format": FORMAT, "target": target.key, "convs": table}, indent=1, sort_keys=True))
    os.replace(partial, path)
    return path


def forget(folder: Path, target: Target, keys: Iterable[str]) -> int:
    """Drop the entries of the conv shapes ``keys`` from the folder's table (written atomically): optimize()
    then lets the cost model choose their lowerings again. Returns how many shapes were dropped."""
    folder = Path(folder)
    table = read_times(folder, target)
    dropped = [key for key in set(keys) if table.pop(key, None) is not None]
    _write(folder, target, table)
    return len(dropped)


def _entries(table: Table):
    """(spec key, variant, epilogue, entry) of every entry of ``table``."""
    for key, variants in table.items():
        for variant, epilogues in variants.items():
            for epilogue, entry in epilogues.items():
                yield key, variant, epilogue, entry


def kernel_variants(graph: Graph, lowering: str, nodes: Iterable[str]) -> list[tuple[str, str, str]]:
    """(ConvSpec.key(), variant, epilogue) of the conv nodes among ``nodes`` (one kernel's callers in ``graph``)
    running ``lowering``: the variant ends in "@blocked" when the kernel reads and writes blocked tensors, in
    "@blocked-output" when it reads NCHW and writes blocked (a stem: cost/model.variant)."""
    from ..backends.conv_kernels import plan_epilogues

    types, plans = graph.types, plan_epilogues(graph)
    found = []
    for name in nodes:
        node = graph.node_map.get(name)
        spec = None if node is None else conv_spec_of(graph, node)
        if spec is None:
            continue
        in_block, out_block = block_of(types[node.inputs[0]].layout), block_of(node.type.layout)
        if in_block is not None and out_block is None:
            continue  # nothing predicts or looks up a blocked input with an NCHW output
        plan = plans.get(name)
        epilogue = "none" if plan is None else plan.activation + ("+residual" if plan.residual else "")
        suffix = BLOCKED if in_block is not None else BLOCKED_OUTPUT if out_block is not None else ""
        found.append((spec.key(), lowering + suffix, epilogue))
    return found


def measured_lowerings(target: Target, log_dirs: Iterable[Path]) -> dict[str, dict[str, dict[str, float]]]:
    """{ConvSpec.key(): {variant: {epilogue: seconds}}} over the target's tables in ``log_dirs``: the fastest
    tuned kernel of each (select_lowering's ``measured``)."""
    measured: dict = {}
    for folder in log_dirs:
        for key, variant, epilogue, entry in _entries(read_times(records_dir(target, folder), target)):
            row = measured.setdefault(key, {}).setdefault(variant, {})
            seconds = float(entry["best_us"]) * 1e-6
            row[epilogue] = min(seconds, row.get(epilogue, seconds))
    return measured


def default_times(target: Target, log_dirs: Iterable[Path]) -> list[tuple[ConvSpec, str, float]]:
    """(spec, variant, seconds) of every default schedule in the target's tables under ``log_dirs``: what the
    cost model predicts, for ``convopt calibrate --from-logs`` (cost/calibrate.refit_from_measurements). A
    shape, variant and epilogue in several folders counts once, with its fastest time."""
    fastest: dict[tuple[str, str, str], float] = {}
    for folder in log_dirs:
        for key, variant, epilogue, entry in _entries(read_times(records_dir(target, folder), target)):
            if variant.endswith(BLOCKED_OUTPUT):
                continue  # no coefficients of their own: predicted with the NCHW ones, which they'd skew
            seconds = float(entry["default_us"]) * 1e-6
            fastest[key, variant, epilogue] = min(seconds, fastest.get((key, variant, epilogue), seconds))
    return [(ConvSpec.from_key(key), variant, seconds) for (key, variant, _), seconds in sorted(fastest.items())]
