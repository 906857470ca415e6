"""The design space of the CPU fused block kernels (fused_block.py, fused_mlp.py, fused_chain.py).

Those kernels are written out in TVMScript rather than scheduled (fused_block.py says why), so their
tunable choices can't be schedule primitives applied to one workload. They are parameters of the kernel's
generator instead (``Tiles``), each sampled as a MetaSchedule categorical decision whose first candidate is
today's rule:

- ``columns``: the most output columns per register tile: 8 (the rule: half the vector registers hold
  accumulators), 4, or 12 (up to three quarters of the registers as accumulators);
- ``vectors``: the most channel vectors per register tile of a 1x1 stage: 2 (the rule: two where the vectors
  pair up, each broadcast input feeding two FMAs, else three where they group in threes and the registers
  allow it: ``channel_vectors``) or 1. The chain kernel's weight layout follows its
  pairing (its weights are constants of the model), so it keeps the rule;
- ``band_factor``: bands per image as a multiple of the rule's one per core: 1, 2 or 4 (more, shorter
  bands: finer load balance across cores, each band's first ring fill computed again).

A point's trace holds the generator's version (``SPACE_VERSION``) and its decisions, nothing else: applied
to the workload (the kernel at the rule's decisions, as optimize() emits it) it changes nothing, and
``Space.realize`` builds the kernel the decisions name. The tuning job measures that kernel and stores the
trace like any other record (tuning/job.py); optimize() builds the recorded winner again the same way
(tuning/apply.py). Records whose decisions meant other kernels (another version) are stale, not misread.
Points whose kernels end up with the same tiles (``Space.plan``: e.g. 8 and 12 columns on a 7-pixel row)
are one kernel: the job measures the first of them only (tuning/tasks.py).

The workload is the kernel at the rule's point: where the rule's kernel changes, the workload does too, and
its old records no longer match any kernel (the kernel is "untuned" again, not "stale").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Hashable

from tvm import tirx

from . import tiling

COLUMNS = 8  # the rule's most columns per register tile


@dataclass(frozen=True)
class Tiles:
    """The tunable choices of a written-out fused kernel (the module docstring); the defaults are the rules."""

    columns: int = COLUMNS
    vectors: int = 2
    band_factor: int = 1


DEFAULT = Tiles()
CANDIDATES = {"columns": (COLUMNS, 4, 12), "vectors": (2, 1), "band_factor": (1, 2, 4)}  # the rule first


def column_tile(width: int, lanes: int, vectors: int = 1, most: int = COLUMNS) -> int:
    """Columns per register tile of ``vectors`` channel vectors: at most ``most``, within the accumulators
    (tiling.accumulators, half the registers: 16 of AVX-512's 32, 8 of AVX2's 16; up to three quarters
    when ``most`` asks for more than the rule's 8), as a divisor of the row where one is close
    (tiling.pick_tile), else with a ragged last tile."""
    budget = tiling.accumulators(lanes) if most <= COLUMNS else tiling.vector_registers(lanes) * 3 // 4
    return tiling.pick_tile(width, max(1, min(most, budget // vectors)))


def channel_vectors(vectors: int, most: int = 2, lanes: int | None = None) -> int:
    """Channel vectors per register tile of a 1x1 stage, where ``most`` (2) allows more than one: given
    ``lanes``, the direct kernel's rule (``tiling.channel_tile``: two where they pair up, else three where they
    group in threes and 3 x 4 columns fit the accumulators, AVX-512's 48, 144 or 240 channels, else one);
    without, pairs only (fused_chain.py lays its weights out in pairs). Three rather than one, alone on an
    Intel AVX-512 core pair (cold inputs, fastest of 7 rounds): 48-48-48 at 56 px 107 -> 92 us, 24-144-24 at
    56 px 186 -> 174, 40-240 at 28 px (3x3 s2, SiLU) 90 -> 82 (docs/block_fusion.md)."""
    if most < 2:
        return 1
    if lanes is None:
        return 2 if vectors % 2 == 0 else 1
    return tiling.channel_tile(vectors, lanes, lanes)[0]


def bands_of(default_bands: int, rows: int, tiles: Tiles) -> int:
    """Bands per image: the rule's ``default_bands`` times the band factor, at most one per output row."""
    return max(1, min(rows, default_bands * tiles.band_factor))


# the generator's version, sampled first (one candidate): bump it when what a point means changes without the
# default kernel changing (a rule of column_tile, bands_of or a plan), so records of the old meaning are stale
SPACE_VERSION = 1


@dataclass(frozen=True)
class Space:
    """One written-out kernel's space: its knobs (each over all of its ``CANDIDATES``), the kernel at a point
    (``build``) and the tiles it ends up with (``plan``: points with equal plans are the same kernel)."""

    knobs: tuple[str, ...]
    build: Callable[[Tiles], tirx.PrimFunc]
    plan: Callable[[Tiles], Hashable]

    def sample(self, sch, func_name: str = "main", target=None) -> None:
        """The default schedule: the version, then each knob sampled, its decision the rule (a schedule
        function's signature; nothing in the workload changes)."""
        sch.sample_categorical([SPACE_VERSION], [1.0], decision=0)
        for name in self.knobs:
            values = CANDIDATES[name]
            sch.sample_categorical(list(values), [1.0 / len(values)] * len(values), decision=0)

    def tiles_of(self, trace) -> Tiles:
        """The point a trace's decisions name; ValueError when they are not this space's samples (a record
        made for another version of the generator or another kernel)."""
        samples = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"]
        if len(samples) != len(self.knobs) + 1:
            raise ValueError(f"{len(samples)} sampled decisions for a space of {len(self.knobs)} knobs and a version")
        if [int(c) for c in samples[0].attrs[0]] != [SPACE_VERSION]:
            raise ValueError(f"a record of version {list(samples[0].attrs[0])} of the space, not {SPACE_VERSION}")
        values = {}
        for inst, name in zip(samples[1:], self.knobs):
            candidates = CANDIDATES[name]
            if [int(c) for c in inst.attrs[0]] != list(candidates):
                raise ValueError(f"knob {name}: candidates {list(inst.attrs[0])}, expected {list(candidates)}")
            values[name] = candidates[int(trace.decisions[inst])]
        return replace(DEFAULT, **values)

    def kernel_key(self, trace) -> Hashable:
        """What tells the kernels of two points apart: the tiles the trace's point ends up with."""
        return self.plan(self.tiles_of(trace))

    def realize(self, sch) -> tirx.PrimFunc:
        """The kernel at the point ``sch``'s trace names."""
        return self.build(self.tiles_of(sch.trace))
