"""The machine profile the cost model reads: peak FLOP/s (a GEMM microbenchmark: the cost model's unit),
the FMA roof (register-resident FMAs, cost/peak.py: what `convopt report` judges kernels against), memory
bandwidth (a large copy), cache sizes, and per-lowering efficiency coefficients calibrated by timing each lowering on
a set of conv shapes. Profiles are stored by Target key (convopt/target.py): the coefficients describe
kernels scheduled for one ISA on one kind of machine.

Measured once per target and cached as JSON in ``$CONVOPT_CACHE_DIR`` (default ``~/.cache/convopt``) as
``machine-<target key>.json``:

- ``measure_machine(target)`` takes about a second and runs on first use;
- ``calibrate()`` builds and times every lowering on ``CALIBRATION_SHAPES`` (minutes; ``convopt
  calibrate``). Until it has run for a target, the coefficients of the shipped profile
  (``profiles/<key>.json``) with the same key are used, or, when none matches, those of the nearest
  shipped key (same ISA first), with a warning once: coefficients are ratios to the peak and bandwidth,
  and this machine's measured peak and bandwidth scale them.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..target import Target

FEATURES = ("flops", "narrow_flops", "slow_flops", "aux_flops", "bytes", "outputs", "copied", "calls")
SHIPPED_PROFILES = Path(__file__).with_name("profiles")
PROFILE_FORMAT = "convopt-machine-profile-1"


@dataclass(frozen=True)
class MachineProfile:
    cpu: str
    cores: int
    peak_flops: float  # FLOP/s, fp32, all cores
    bandwidth: float  # bytes/s, main memory copy (read + write)
    caches: dict[str, int]  # "L1d", "L2", "L3" -> bytes per instance
    # lowering -> feature -> coefficient: seconds = sum(coef * feature / unit), unit = peak, bandwidth, 1 ns per
    # output or copied element, or 1 us per call
    coefficients: dict[str, dict[str, float]] = field(default_factory=dict)
    calibrated_on: str = ""  # the CPU and target key the coefficients were fitted on
    target_key: str = ""  # the Target this profile describes
    # coefficient keys `convopt calibrate` fitted on this machine (and "stream_bandwidth" when it measured that):
    # a cached profile keeps those and takes the others from the shipped profile, so a newer convopt's fit (a
    # kernel that changed) reaches old caches
    fitted_here: tuple[str, ...] = ()
    fma_peak_flops: float = 0.0  # FLOP/s, fp32 FMAs from registers on all cores (0: not measured)
    # bytes/s at which a conv kernel reads weights no cache holds, measured by `convopt calibrate`
    # (weight_stream.py; a copy's ``bandwidth`` overstates it); 0: not measured, the copy's stands in
    stream_bandwidth: float = 0.0

    @property
    def weight_bandwidth(self) -> float:
        """Bytes/s of weights streamed from memory by a conv kernel (cost/model.weight_stream_seconds)."""
        return self.stream_bandwidth or self.bandwidth

    @property
    def roof_flops(self) -> float:
        """The arithmetic roof kernels are judged against: the FMA peak where measured, else the GEMM rate."""
        return self.fma_peak_flops or self.peak_flops

    def with_fitted(self, coefficients: dict[str, dict[str, float]], names, **changes) -> "MachineProfile":
        """This profile with ``coefficients``, the keys ``names`` marked as fitted on this machine."""
        return replace(self, coefficients=coefficients, fitted_here=tuple(sorted({*self.fitted_here, *names})),
                       **changes)

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> "MachineProfile":
        try:
            data = json.loads(text)
            if data.pop("format", None) != PROFILE_FORMAT:
                raise ValueError(f"not a {PROFILE_FORMAT} file")
            profile = cls(**{**data, "fitted_here": tuple(data.get("fitted_here", ()))})
            if profile.peak_flops <= 0 or profile.bandwidth <= 0:
                raise ValueError("peak_flops and bandwidth must be positive")
            if not np.isfinite(profile.fma_peak_flops) or profile.fma_peak_flops < 0:
                raise ValueError("fma_peak_flops must be finite and >= 0")
            if not np.isfinite(profile.stream_bandwidth) or profile.stream_bandwidth < 0:
                raise ValueError("stream_bandwidth must be finite and >= 0")
            for name, coefs in profile.coefficients.items():
                unknown = set(coefs) - set(FEATURES)
                if unknown or any(not np.isfinite(v) or v < 0 for v in coefs.values()):
                    raise ValueError(f"bad coefficients for {name}: {coefs}")
            return profile
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source}: corrupt machine profile ({e}); delete it to measure again") from e


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_seconds(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _roof(target: Target) -> float:
    """The FMA roof where code for ``target`` runs on this host (0: it can't be measured here)."""
    from .peak import fma_peak_flops  # imported when measured: it compiles with TVM

    return fma_peak_flops(target) if target.is_cpu and target.runs_here else 0.0


COPY_FLOATS = 32 * 1024 ** 2  # a 128 MiB copy: four times the largest L3 convopt has met (32 MB), so it streams memory


def copy_bandwidth(threads: int, repeat: int = 5, buffers: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Bytes/s of a 128 MiB copy (read and write counted) on ``threads`` threads, the fastest of ``repeat``;
    ``buffers``: (source, destination) of ``COPY_FLOATS`` floats to reuse."""
    src, dst = buffers or (torch.empty(COPY_FLOATS), torch.empty(COPY_FLOATS))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), repeat)
    finally:
        torch.set_num_threads(previous)


def measure_machine(target: Target) -> MachineProfile:
    """Peak FLOP/s from a 1024^3 fp32 GEMM, the FMA roof (cost/peak.py), bandwidth from a 128 MiB copy, on
    ``target.cores`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(target.cores)
    try:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        gemm = _best_seconds(lambda: torch.mm(a, b), 7)
    finally:
        torch.set_num_threads(previous)
    return MachineProfile(cpu=cpu_name(), cores=target.cores, peak_flops=2 * 1024 ** 3 / gemm,
                          bandwidth=copy_bandwidth(target.cores), caches=dict(target.caches),
                          target_key=target.key, fma_peak_flops=_roof(target))


def cache_dir() -> Path:
    return Path(os.environ.get("CONVOPT_CACHE_DIR", Path.home() / ".cache" / "convopt"))


def profile_path(target: Target) -> Path:
    return cache_dir() / f"machine-{target.key}.json"


def shipped_profiles() -> dict[str, MachineProfile]:
    """Target key -> the profile shipped in ``profiles/``."""
    return {path.stem: MachineProfile.from_json(path.read_text(), str(path))
            for path in sorted(SHIPPED_PROFILES.glob("*.json"))}


def nearest_shipped(target: Target) -> MachineProfile:
    """The shipped profile of ``target.key``, else the most similar one: same ISA, same CPU family, cores."""
    shipped = shipped_profiles()
    if target.key in shipped:
        return shipped[target.key]

    def similarity(key: str) -> tuple:
        kind, name, isa, *rest = key.split("-")
        return (isa == target.isa, name[:-1] == target.name[:-1], rest[-1:] == [f"{target.cores}c"], key)

    return shipped[max(shipped, key=similarity)]


_warned: set[str] = set()


def load_profile(target: Target, *, refresh: bool = False, measured_here: bool = False) -> MachineProfile:
    """The profile of ``target``: from the cache, else measured now (and cached) with the coefficients of
    the shipped profile for its key or the nearest one (saying so once). The cost model's peak and bandwidth
    are those its coefficients were fitted with (``_in_fitted_units``); ``measured_here``: this machine's own,
    as measured (a roofline of this machine: convopt report)."""
    path = profile_path(target)
    shipped = nearest_shipped(target)
    if path.is_file() and not refresh:
        cached = MachineProfile.from_json(path.read_text(), str(path))
        # the shipped coefficients, except those `convopt calibrate` fitted here: a newer convopt's (a new
        # lowering, a kernel rewritten) replace the copies an older one cached
        fitted = {name: cached.coefficients[name] for name in cached.fitted_here if name in cached.coefficients}
        if not cached.fma_peak_flops:  # cached by a convopt that did not measure the roof
            cached = replace(cached, fma_peak_flops=_roof(target))
            if cached.fma_peak_flops:
                save_profile(cached, path)
        profile = replace(cached, coefficients={**shipped.coefficients, **fitted},
                          stream_bandwidth=_stream_bandwidth(cached, shipped, target))
        return profile if fitted or measured_here else _in_fitted_units(profile, shipped, target)
    if shipped.target_key != target.key and target.key not in _warned:
        _warned.add(target.key)
        warnings.warn(f"convopt's cost model has no profile for target {target.key}; using the coefficients "
                      f"fitted on {shipped.target_key} ({shipped.cpu}), scaled by this machine's measured peak "
                      "and bandwidth. Run `convopt calibrate` to fit this machine.", stacklevel=2)
    profile = replace(measure_machine(target), coefficients=shipped.coefficients,
                      calibrated_on=shipped.calibrated_on or shipped.target_key)
    profile = replace(profile, stream_bandwidth=_stream_bandwidth(profile, shipped, target))
    save_profile(profile, path)
    return profile if measured_here else _in_fitted_units(profile, shipped, target)


def _in_fitted_units(profile: MachineProfile, shipped: MachineProfile, target: Target) -> MachineProfile:
    """``profile`` with the peak and bandwidth of ``shipped`` when that is the profile of this very target key:
    the units its coefficients were fitted in, so that the cost model's choices on a machine of that kind don't
    depend on how busy it was when its cache was written (this Zen 5's cache measured a GEMM peak of 139
    GFLOP/s, its two calibrations 191 and 222). Another key's coefficients are scaled by this machine's own
    measurements instead (load_profile)."""
    if shipped.target_key != target.key:
        return profile
    return replace(profile, peak_flops=shipped.peak_flops, bandwidth=shipped.bandwidth)


def _stream_bandwidth(cached: MachineProfile, shipped: MachineProfile, target: Target) -> float:
    """The weight-streaming rate: measured here, else the shipped profile's for the same target key (the same
    kind of machine, as for the coefficients; unscaled: a copy's bandwidth measured twice on this Zen 5 gave
    62 and 89 GB/s), else none (the copy bandwidth stands in)."""
    if "stream_bandwidth" in cached.fitted_here:
        return cached.stream_bandwidth
    return shipped.stream_bandwidth if shipped.target_key == target.key else 0.0


def save_profile(profile: MachineProfile, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of its own: processes saving at once (test workers, two jobs) never share one
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        tmp.write(profile.to_json())
    Path(tmp.name).replace(path)  # atomic: an interrupted write never leaves a half-written profile
    return path
