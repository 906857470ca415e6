"""convopt.target: one Target resolved from "cpu", "cuda", TVM target dicts and tvm.target.Target, with the
ISA facts that change code and a stable key. No host needed except for "cpu"."""

import pytest
import tvm

from convopt.target import resolve_target


@pytest.mark.parametrize("mcpu,lanes,registers,isa,key", [
    ("haswell", 8, 16, "avx2", "llvm-haswell-avx2-2c"),
    ("znver3", 8, 16, "avx2", "llvm-znver3-avx2-2c"),
    ("skylake-avx512", 16, 32, "avx512", "llvm-skylake-avx512-avx512-2c"),
    ("znver4", 16, 32, "avx512", "llvm-znver4-avx512-bf16-vnni-2c"),
    ("sapphirerapids", 16, 32, "avx512", "llvm-sapphirerapids-avx512-amx-bf16-vnni-2c"),
    ("x86-64", 4, 16, "sse", "llvm-x86-64-sse-2c"),
])
def test_cpu_targets_from_dicts(mcpu, lanes, registers, isa, key):
    t = resolve_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    assert (t.kind, t.name, t.lanes, t.vector_registers, t.isa, t.key, t.cores) == (
        "llvm", mcpu, lanes, registers, isa, key, 2)
    assert t.is_cpu and t.fma == (lanes > 4)
    assert isinstance(t.tvm, tvm.target.Target) and str(t) == key


def test_a_tvm_target_and_its_dict_resolve_alike():
    spec = {"kind": "llvm", "mcpu": "rocketlake", "num-cores": 4}
    assert resolve_target(tvm.target.Target(spec)) == resolve_target(spec)
    assert "avx512vnni" in resolve_target(spec).features


def test_cuda_target():
    t = resolve_target({"kind": "cuda", "arch": "sm_90"})
    assert (t.kind, t.name, t.key, t.is_cpu, t.lanes) == ("cuda", "sm_90", "cuda-sm_90", False, 1)
    assert resolve_target("cuda").kind == "cuda"


def test_host():
    t = resolve_target("cpu")
    assert t.is_cpu and t.lanes in (4, 8, 16) and t.cores >= 1 and t.runs_here
    assert set(t.caches) >= {"L1d", "L2", "L3"}
    assert resolve_target(t) is t


def test_the_host_cpu_can_be_named(monkeypatch):
    """CONVOPT_HOST_CPU: "cpu" is another x86 CPU on this machine's cores and caches (CI runs the suite as an
    AVX2 host on an AVX-512 one)."""
    monkeypatch.setenv("CONVOPT_HOST_CPU", "haswell")
    t = resolve_target("cpu")
    assert (t.name, t.lanes, t.vector_registers, t.isa) == ("haswell", 8, 16, "avx2")
    assert t.key == f"llvm-haswell-avx2-{t.cores}c" and set(t.caches) >= {"L1d", "L2", "L3"}
    assert str(t.tvm.attrs["mcpu"]) == "haswell" and t.runs_here  # every AVX-512 host runs AVX2 code


def test_an_unknown_host_cpu_name_is_refused(monkeypatch):
    monkeypatch.setenv("CONVOPT_HOST_CPU", "pentium-9000")
    with pytest.raises(ValueError, match="CONVOPT_HOST_CPU='pentium-9000'.*no x86 cpu"):
        resolve_target("cpu")


def test_with_lanes_schedules_for_another_width_on_the_same_code_target():
    avx2 = resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    wide = avx2.with_lanes(16)
    assert (wide.lanes, wide.vector_registers, wide.tvm) == (16, 32, avx2.tvm)


def test_runs_here_needs_the_isa():
    sse = resolve_target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 2})
    assert sse.runs_here  # every x86-64 host
    host = resolve_target("cpu")
    amx = resolve_target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
    assert amx.runs_here == (amx.features <= host.features)  # AMX runs only on a host that has it


@pytest.mark.parametrize("bad", ["gpu", {"kind": "llvm", "mcpu": 3}, {"kind": "opencl"}, 42])
def test_bad_targets_are_refused(bad):
    with pytest.raises(ValueError, match="target"):
        resolve_target(bad)
