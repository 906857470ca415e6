"""The machine profile the cost model reads: peak FLOP/s (a GEMM microbenchmark), memory bandwidth (a
large copy), cache sizes (sysfs), and per-lowering efficiency coefficients calibrated by timing
each lowering on a set of conv shapes.

Measured once per machine and cached as JSON in ``$CONVOPT_CACHE_DIR`` (default ``~/.cache/convopt``):

- ``measure_machine()`` takes about a second and runs on first use;
- ``calibrate()`` builds and times every lowering on ``CALIBRATION_SHAPES`` (minutes; ``convopt
  calibrate``). Until it has run on a machine, the coefficients shipped in ``default_profile.json``
  (calibrated on the machine named there) are used: they are ratios to that machine's peak and
  bandwidth, so they carry over to similar CPUs roughly, and a local calibration makes them exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

FEATURES = ("flops", "narrow_flops", "slow_flops", "aux_flops", "bytes", "outputs", "copied", "calls")
DEFAULT_PROFILE = Path(__file__).with_name("default_profile.json")
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
    calibrated_on: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> "MachineProfile":
        try:
            data = json.loads(text)
            if data.pop("format", None) != PROFILE_FORMAT:
                raise ValueError(f"not a {PROFILE_FORMAT} file")
            profile = cls(**data)
            if profile.peak_flops <= 0 or profile.bandwidth <= 0:
                raise ValueError("peak_flops and bandwidth must be positive")
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


def cache_sizes() -> dict[str, int]:
    sizes: dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
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


def _best_seconds(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_machine(cores: int | None = None) -> MachineProfile:
    """Peak FLOP/s from a 1024^3 fp32 GEMM, bandwidth from a 128 MiB copy, caches from sysfs."""
    from ..backends.tvm_backend import physical_cores

    cores = cores or physical_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        gemm = _best_seconds(lambda: torch.mm(a, b), 7)
        src, dst = torch.empty(32 * 1024 ** 2), torch.empty(32 * 1024 ** 2)
        copy = _best_seconds(lambda: dst.copy_(src), 5)
    finally:
        torch.set_num_threads(previous)
    return MachineProfile(cpu=cpu_name(), cores=cores, peak_flops=2 * 1024 ** 3 / gemm,
                          bandwidth=2 * src.numel() * 4 / copy, caches=cache_sizes())


def cache_dir() -> Path:
    return Path(os.environ.get("CONVOPT_CACHE_DIR", Path.home() / ".cache" / "convopt"))


def machine_key(cores: int | None = None) -> str:
    from ..backends.tvm_backend import physical_cores

    text = f"{cpu_name()}|{cores or physical_cores()}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def profile_path() -> Path:
    return cache_dir() / f"machine-{machine_key()}.json"


def default_coefficients() -> tuple[dict[str, dict[str, float]], str]:
    shipped = MachineProfile.from_json(DEFAULT_PROFILE.read_text(), str(DEFAULT_PROFILE))
    return shipped.coefficients, shipped.calibrated_on


def load_profile(*, refresh: bool = False) -> MachineProfile:
    """This machine's profile: from the cache, else measured now (and cached) with the shipped coefficients."""
    path = profile_path()
    if path.is_file() and not refresh:
        return MachineProfile.from_json(path.read_text(), str(path))
    profile = measure_machine()
    coefficients, calibrated_on = default_coefficients()
    profile = replace(profile, coefficients=coefficients, calibrated_on=calibrated_on)
    save_profile(profile, path)
    return profile


def save_profile(profile: MachineProfile, path: Path | None = None) -> Path:
    path = path or profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(profile.to_json())
    tmp.replace(path)  # atomic: an interrupted write never leaves a half-written profile
    return path
