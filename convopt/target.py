"""One resolved compile target: what the code generator and the schedules need to know about a machine.

``resolve_target`` runs once, at the API boundary (optimize(), the CLI, the kernel harness), on "cpu"
(this host), "cuda", a TVM target dict or a ``tvm.target.Target``; every module below receives the
resulting ``Target`` and none of them inspects TVM targets or the host again.

The facts that change generated code:

    lanes             fp32 lanes of one SIMD register: 16 with AVX-512, 8 with AVX/AVX2, 4 with SSE (1 on CUDA)
    vector_registers  architectural vector registers: 32 zmm with AVX-512, 16 ymm/xmm otherwise
    fma               fused multiply-add
    features          the ISA extensions that select instructions (avx2, avx512f, avx512vnni, avx512bf16, amx-tile)
    cores             physical cores the runtime's thread pool uses
    caches            L1d / L2 / L3 bytes (per instance) for tile sizes; the host's from sysfs, else typical values

``key`` names all of them (e.g. ``llvm-znver4-avx512-2c``): tuning records and cost-model profiles are
stored under it, so numbers fitted on one kind of machine are never silently used on another.

A schedule for another SIMD width than the host's can be built with ``target.with_lanes(16)``: the code
is compiled for the same TVM target, and LLVM splits a 16-lane vector into two 8-lane halves on AVX2.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tvm

# extensions that change the code we generate; everything else the LLVM target carries by itself
_ISA_FEATURES = ("fma", "avx2", "avx512f", "avx512vnni", "avx512bf16", "amx-tile")
# caches assumed for a target that is not this host (bytes per instance)
_TYPICAL_CACHES = {"L1d": 32 * 1024, "L2": 1024 * 1024, "L3": 32 * 1024 * 1024}


@dataclass(frozen=True)
class Target:
    kind: str  # "llvm" (x86 CPU) or "cuda"
    name: str  # LLVM cpu name ("znver4", "rocketlake", "x86-64") or CUDA arch ("sm_80")
    lanes: int
    vector_registers: int
    fma: bool
    features: frozenset[str]
    cores: int
    caches: dict[str, int] = field(compare=False, hash=False)
    tvm: Any = field(compare=False, hash=False, repr=False)  # the tvm.target.Target code is compiled for

    @property
    def is_cpu(self) -> bool:
        return self.kind == "llvm"

    @property
    def isa(self) -> str:
        """The widest vector ISA: "avx512", "avx2", "avx", "sse" (CPU) or the CUDA arch."""
        if not self.is_cpu:
            return self.name
        return {16: "avx512", 8: "avx2" if "avx2" in self.features else "avx", 4: "sse"}[self.lanes]

    @property
    def key(self) -> str:
        """A stable name of everything that changes code: kind, cpu, ISA, extra extensions, cores."""
        if not self.is_cpu:
            return f"cuda-{self.name}"
        extra = sorted(f.replace("avx512", "").replace("-tile", "") for f in self.features
                       if f not in ("fma", "avx2", "avx512f"))
        return "-".join(["llvm", self.name, self.isa, *extra, f"{self.cores}c"])

    def with_lanes(self, lanes: int) -> "Target":
        """This target scheduled for another SIMD width (tests; the code still compiles for ``self.tvm``)."""
        return replace(self, lanes=lanes, vector_registers=vector_registers(lanes))

    @property
    def runs_here(self) -> bool:
        """Whether code built for this target runs on this machine (a GPU is present; the host CPU has
        every ISA extension the code may use)."""
        if not self.is_cpu:
            import torch

            return torch.cuda.is_available()
        return self.features <= _host_features()

    def device(self):
        return tvm.cuda(0) if self.kind == "cuda" else tvm.cpu(0)

    def configure_runtime(self) -> None:
        """Thread pool for modules built for this target: one worker per physical core.

        TVM's pool assumes SMT (hardware_concurrency / 2 workers: one on a 2-core machine without SMT) and
        reads TVM_NUM_THREADS when it first starts, which is the first parallel kernel call; a value the
        user set is kept."""
        if self.is_cpu:
            os.environ.setdefault("TVM_NUM_THREADS", str(self.cores))

    def __str__(self) -> str:
        return self.key


def vector_registers(lanes: int) -> int:
    """Architectural vector registers of the x86 ISA whose registers hold ``lanes`` fp32 values."""
    return 32 if lanes >= 16 else 16


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or len(os.sched_getaffinity(0)) or 1


def host_cache_sizes() -> dict[str, int]:
    """"L1d", "L2", "L3" -> bytes per instance, from sysfs (empty where sysfs has none)."""
    sizes: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1024, "M": 1024 ** 2}.get(size[-1], 1)
        sizes[f"L{level}" + ("d" if kind == "Data" else "")] = int(size.rstrip("KM")) * scale
    return sizes


@functools.lru_cache(maxsize=None)
def _host_features() -> frozenset[str]:
    host = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return frozenset(tvm.target.codegen.llvm_get_cpu_features(host))


def _cpu_target(tvm_target: tvm.target.Target, *, host: bool) -> Target:
    llvm_features = set(tvm.target.codegen.llvm_get_cpu_features(tvm_target))
    features = frozenset(llvm_features & set(_ISA_FEATURES))
    lanes = 16 if "avx512f" in features else 8 if {"avx", "avx2"} & llvm_features else 4
    cores = int(tvm_target.attrs.get("num-cores", 0) or 0) or physical_cores()
    caches = {**_TYPICAL_CACHES, **(host_cache_sizes() if host else {})}
    return Target("llvm", str(tvm_target.attrs.get("mcpu", "") or "generic"), lanes, vector_registers(lanes),
                  "fma" in features, features, cores, caches, tvm_target)


# limits every CUDA GPU since sm_20 has: 1024 threads and 48 KB of static shared memory per block. MetaSchedule's
# CUDA rules (thread binding, cooperative fetch) need them in the target, and TVM's "cuda" kind has no default
CUDA_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152}


def _cuda_target(tvm_target: tvm.target.Target) -> Target:
    missing = {k: v for k, v in CUDA_LIMITS.items() if k not in tvm_target.attrs}
    if missing:
        tvm_target = tvm.target.Target({**tvm_target.export(), **missing})
    return Target("cuda", str(tvm_target.attrs.get("arch", "sm_80")), 1, 0, True, frozenset(), 1, {}, tvm_target)


HOST_CPU_VARIABLE = "CONVOPT_HOST_CPU"


def host_target() -> Target:
    """This machine's CPU: LLVM with the host's cpu name and its physical core count.

    ``CONVOPT_HOST_CPU`` (an LLVM cpu name, e.g. "znver3" or "haswell") replaces the host's cpu name: "cpu"
    then means that CPU on this machine's cores and caches. On an AVX-512 host, an AVX2 name builds and runs
    every kernel, cost-model profile and test as an AVX2 host would (its code runs here); a name whose ISA
    this host lacks builds code that doesn't run here (``Target.runs_here`` is False)."""
    named = os.environ.get(HOST_CPU_VARIABLE, "").strip()
    mcpu = named or tvm.target.codegen.llvm_get_system_cpu()
    if named and named not in tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"})):
        raise ValueError(f"{HOST_CPU_VARIABLE}={mcpu!r}: LLVM knows no x86 cpu of that name (e.g. znver3, haswell, "
                         "skylake-avx512, sapphirerapids)")
    tvm_target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": physical_cores()})
    return _cpu_target(tvm_target, host=True)


def _cuda_arch() -> str:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}"
    return "sm_80"


def resolve_target(target: Any) -> Target:
    """A ``Target`` from "cpu", "cuda", a TVM target dict, a ``tvm.target.Target`` or a ``Target``."""
    if isinstance(target, Target):
        return target
    if target == "cpu":
        return host_target()
    if target == "cuda":
        target = {"kind": "cuda", "arch": _cuda_arch()}
    if isinstance(target, dict):
        try:
            target = tvm.target.Target(target)
        except Exception as e:  # noqa: BLE001 - TVM raises several kinds for a bad dict
            raise ValueError(f"not a valid TVM target: {target!r} ({e})") from None
    if isinstance(target, tvm.target.Target):
        kind = target.kind.name
        if kind == "llvm":
            host_cpu = tvm.target.codegen.llvm_get_system_cpu()
            return _cpu_target(target, host=str(target.attrs.get("mcpu", "")) == host_cpu)
        if kind == "cuda":
            return _cuda_target(target)
        raise ValueError(f"convopt compiles for llvm (x86 CPUs) and cuda targets, not {kind!r}")
    raise ValueError(f"target must be 'torch', 'cpu', 'cuda', a TVM target dict or a tvm.target.Target, "
                     f"not {target!r}")
