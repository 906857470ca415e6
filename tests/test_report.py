"""convopt report: per-kernel times of a compiled model, its JSON and roofline picture, and the CLI."""

import json
import time

import pytest
import torch
from torch import nn

import convopt
from convopt.cli import main
from convopt.report import format_table, report
from convopt.tuning.apply import STATUSES


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = self.conv2(y) + y
        return self.fc(y.mean((2, 3)))


def test_report_times_every_kernel_and_writes_json_and_plot(tmp_path):
    x = torch.randn(1, 3, 20, 20)
    fast = convopt.optimize(SmallNet().eval(), x, target="cpu")
    result = report(fast, x, out=tmp_path, runs=3, rounds=2, model="small")
    kernels = {k["name"]: k for k in result["kernels"]}
    convs = [k for k in result["kernels"] if k["kind"] not in ("op", "builtin", "dense")]
    assert sorted(n for k in convs for n in k["nodes"]) == sorted(
        n.name for n in fast.graph.nodes if n.op.value == "conv2d")
    dense = next(k for k in convs if k["flops"] == 2 * 16 * 3 * 9 * 20 * 20)  # conv1's direct FLOPs
    assert dense["kind"] == next(n.attrs.lowering for n in fast.graph.nodes if n.name in dense["nodes"])
    assert all(k["ms"] > 0 and k["calls"] >= 1 for k in kernels.values())
    assert [list(k["nodes"]) for k in result["kernels"] if k["kind"] == "dense"] == [["linear"]]
    assert abs(sum(k["share"] for k in kernels.values()) - 1) < 1e-9
    assert all(k["bound_ms"] > 0 and k["x_bound"] > 0 for k in convs)
    assert {k["schedule"] for k in convs} <= set(STATUSES)  # how convopt's kernels were scheduled
    assert all(k["schedule"] == "" for k in result["kernels"] if k["kind"] in ("op", "builtin"))
    assert result["target"] == fast.target and result["peak_gflops"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["kernels"][0]["name"] == result["kernels"][0]["name"]
    assert (tmp_path / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(result, top=2)
    assert "x bound" in table and result["kernels"][0]["name"][:40] in table and "more kernels" in table


def test_report_needs_a_tvm_module():
    x = torch.randn(1, 3, 8, 8)
    fast = convopt.optimize(SmallNet().eval(), x, target="torch")
    with pytest.raises(ValueError, match="compiled with TVM"):
        report(fast, x)


def test_cli_report(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text("from tests.test_report import SmallNet\n\ndef build():\n    return SmallNet()\n")
    out = tmp_path / "rep"
    assert main(["report", f"{path}:build", "--input-shape", "1,3,12,12", "--runs", "2", "--rounds", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GFLOP/s" in text and (out / "report.json").is_file() and (out / "roofline.png").is_file()
    assert main(["report", f"{path}:build", "--input-shape", "1,3,12,12", "--runs", "2", "--rounds", "1", "--out",
                 str(out), "--untuned"]) == 0
    kernels = json.loads((out / "report.json").read_text())["kernels"]
    assert {k["schedule"] for k in kernels if k["kind"] not in ("op", "builtin")} == {"untuned"}


def test_timing_starts_after_a_warm_up_long_enough_for_other_pools_to_stop_spinning(monkeypatch):
    import itertools

    import convopt.report
    from convopt.report import settle

    clock = itertools.count()  # a clock that moves one second per reading: no wall-clock timing in the test
    monkeypatch.setattr(convopt.report.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    settle(lambda: calls.append(0), seconds=5)
    assert len(calls) == 6  # the two calls always made, then one per reading until 5 s have passed
    monkeypatch.undo()
    calls.clear()
    settle(lambda: (calls.append(0), time.sleep(0.03)), seconds=0.0)  # at least two calls, however short
    assert len(calls) == 2


def test_each_kernel_counts_its_lowest_round_median_and_the_plain_run_its_lowest_round():
    from convopt.report import _aggregate

    table = {"conv": {"lowering": "direct", "flops": 10, "bytes": 4, "nodes": ["c1"]}}
    # round 1: the conv slow (a neighbour's phase), round 2: the builtin slow; two runs of two conv calls each
    rounds = [[{"conv": [3.0, 3.0], "vm.builtin.alloc": [1.0]}, {"conv": [3.0, 5.0], "vm.builtin.alloc": [1.0]}],
              [{"conv": [1.0, 1.0], "vm.builtin.alloc": [4.0]}, {"conv": [1.0, 2.0], "vm.builtin.alloc": [6.0]}]]
    rows = {r.name: r for r in _aggregate(rounds, table)}
    assert rows["conv"].seconds == 2.5  # round 2's median of 2.0 and 3.0 beats round 1's 7.0
    assert rows["vm.builtin.alloc"].seconds == 1.0  # round 1's
    assert (rows["conv"].calls, rows["conv"].flops, rows["conv"].kind) == (2, 20, "direct")
    assert rows["vm.builtin.alloc"].kind == "builtin"


def test_rounds_are_spread_in_time_and_the_plain_run_is_the_lowest_round(monkeypatch):
    import convopt.report

    x = torch.randn(1, 3, 8, 8)
    fast = convopt.optimize(SmallNet().eval(), x, target="cpu")
    plain_by_round = iter([0.5, 0.2, 0.9])
    sleeps = []
    monkeypatch.setattr(convopt.report, "median_seconds", lambda run, runs: next(plain_by_round))
    monkeypatch.setattr(convopt.report.time, "sleep", sleeps.append)
    monkeypatch.setattr(convopt.report, "settle", lambda run, seconds=0.0: run())
    rows, plain = convopt.report.time_kernels(fast, x, runs=2, rounds=3)
    assert plain == 0.2 and sleeps == [convopt.report.ROUND_GAP_SECONDS] * 2
    assert rows and all(r.seconds > 0 for r in rows)


def test_the_bandwidth_roof_is_the_highest_copy_measured_in_the_rounds(monkeypatch):
    """One copy after each round's runs; the bound of a kernel that only moves bytes follows the highest of
    them, and the cached profile's figure is kept beside it."""
    import convopt.report

    x = torch.randn(1, 3, 8, 8)
    fast = convopt.optimize(SmallNet().eval(), x, target="cpu")
    measured = iter([40e9, 80e9, 60e9])
    monkeypatch.setattr(convopt.report, "copy_bandwidth", lambda threads, buffers=None: next(measured))
    result = report(fast, x, runs=2, rounds=3)
    assert result["round_bandwidths_gb_s"] == [40.0, 80.0, 60.0] and result["bandwidth_gb_s"] == 80.0
    assert result["profile_bandwidth_gb_s"] > 0
    memory_bound = [k for k in result["kernels"] if k["bytes"] and k["bytes"] / 80e9 > k["flops"] / (result["peak_gflops"] * 1e9)]
    assert memory_bound and all(abs(k["bound_ms"] - k["bytes"] / 80e9 * 1e3) < 1e-12 for k in memory_bound)
    assert "a copy in each round" in format_table(result)


def test_the_report_keeps_the_profile_bandwidth_without_measurements():
    from convopt.cost.profile import MachineProfile
    from convopt.report import KernelTime, build_report

    profile = MachineProfile(cpu="x", cores=2, peak_flops=1e11, bandwidth=50e9, caches={}, target_key="k",
                             fma_peak_flops=1e11)
    rows = [KernelTime("copy", "op", 1, 1e-3, 0, 10 ** 7, ())]
    result = build_report(rows, 1e-3, profile, "k")
    assert result["bandwidth_gb_s"] == 50.0 and result["round_bandwidths_gb_s"] == []
    assert result["kernels"][0]["bound_ms"] == pytest.approx(10 ** 7 / 50e9 * 1e3)
    assert result["kernels"][0]["x_bound"] == pytest.approx(1e-3 / (10 ** 7 / 50e9))
    assert "(the profile's)" in format_table(result)


def test_time_kernels_calls_after_round_once_a_round():
    import convopt.report

    x = torch.randn(1, 3, 8, 8)
    fast = convopt.optimize(SmallNet().eval(), x, target="cpu")
    calls = []
    convopt.report.time_kernels(fast, x, runs=1, rounds=3, after_round=lambda: calls.append(1))
    assert calls == [1, 1, 1]


def _report_of(seconds: dict[str, float], bandwidths: list[float], run_ms: float) -> dict:
    from convopt.cost.profile import MachineProfile
    from convopt.report import KernelTime, build_report

    profile = MachineProfile(cpu="x", cores=2, peak_flops=1e11, bandwidth=50e9, caches={}, target_key="k",
                             fma_peak_flops=1e11)
    rows = [KernelTime("conv", "direct", 1, seconds["conv"], 10 ** 8, 10 ** 6, ("conv2d",)),
            KernelTime("copy", "op", 2, seconds["copy"], 0, 10 ** 7, ())]
    return build_report(rows, run_ms / 1e3, profile, "k", "m", bandwidths)


def test_rates_and_bounds_are_net_of_the_instruments_cost_a_call():
    """The probe (a VM call that does nothing) measures the instrument's cost a call; each kernel's net time is
    its time less that many times its calls, and its rates and x bound come from the net time."""
    from convopt.cost.profile import MachineProfile
    from convopt.report import INSTRUMENT_PROBE, KernelTime, build_report

    profile = MachineProfile(cpu="x", cores=2, peak_flops=1e11, bandwidth=50e9, caches={}, target_key="k",
                             fma_peak_flops=1e11)
    rows = [KernelTime("copy", "op", 4, 10e-6, 0, 10 ** 5, ()),
            KernelTime(INSTRUMENT_PROBE, "builtin", 10, 4e-6, 0, 0, ()),
            KernelTime("tiny", "op", 1, 0.2e-6, 0, 10, ())]
    result = build_report(rows, 12e-6, profile, "k")
    by_name = {k["name"]: k for k in result["kernels"]}
    assert result["call_overhead_us"] == pytest.approx(0.4) and result["instrumented_ms"] == pytest.approx(14.2e-3)
    copy = by_name["copy"]
    assert copy["ms"] == pytest.approx(10e-3) and copy["net_ms"] == pytest.approx(10e-3 - 4 * 0.4e-3)
    assert copy["x_bound"] == pytest.approx((10e-6 - 4 * 0.4e-6) / (10 ** 5 / 50e9))
    assert copy["gbytes_per_s"] == pytest.approx(10 ** 5 / (10e-6 - 4 * 0.4e-6) / 1e9)
    assert by_name[INSTRUMENT_PROBE]["net_ms"] == pytest.approx(0.0, abs=1e-12)
    assert by_name["tiny"]["net_ms"] == 0.0 and by_name["tiny"]["x_bound"] == 0.0  # within the instrument's cost
    assert "0.40 us a call the instrument's" in format_table(result)
    without = build_report(rows[:1], 10e-6, profile, "k")  # no probe: nothing to subtract
    assert without["call_overhead_us"] == 0.0 and without["kernels"][0]["net_ms"] == pytest.approx(10e-3)


def test_a_models_report_measures_the_instruments_cost_with_the_probe():
    from convopt.report import INSTRUMENT_PROBE

    x = torch.randn(1, 3, 20, 20)
    result = report(convopt.optimize(SmallNet().eval(), x, target="cpu"), x, runs=3, rounds=2)
    probe = next(k for k in result["kernels"] if k["name"] == INSTRUMENT_PROBE)  # KillAfterLastUse's calls
    assert result["call_overhead_us"] == pytest.approx(probe["ms"] * 1e3 / probe["calls"])
    assert 0 < result["call_overhead_us"] < 50
    assert all(k["net_ms"] <= k["ms"] for k in result["kernels"])


def test_merge_reports_takes_each_kernels_lowest_time_and_the_highest_bandwidth():
    from convopt.report import merge_reports

    slow_copy = _report_of({"conv": 1.0e-3, "copy": 0.8e-3}, [40e9, 45e9], run_ms=2.0)
    slow_conv = _report_of({"conv": 1.5e-3, "copy": 0.3e-3}, [90e9, 60e9], run_ms=2.2)
    merged = merge_reports([slow_copy, slow_conv])
    by_name = {k["name"]: k for k in merged["kernels"]}
    assert by_name["conv"]["seconds"] == 1.0e-3 and by_name["copy"]["seconds"] == 0.3e-3
    assert merged["bandwidth_gb_s"] == 90.0 and merged["round_bandwidths_gb_s"] == [40.0, 45.0, 90.0, 60.0]
    assert by_name["copy"]["bound_ms"] == pytest.approx(10 ** 7 / 90e9 * 1e3)  # the copy is memory-bound
    assert by_name["copy"]["x_bound"] == pytest.approx(0.3e-3 / (10 ** 7 / 90e9))
    assert by_name["conv"]["x_bound"] == pytest.approx(1.0e-3 / (10 ** 8 / 1e11))  # compute-bound: the FMA roof
    assert by_name["conv"]["share"] == pytest.approx(1.0 / 1.3) and merged["instrumented_ms"] == pytest.approx(1.3)
    assert merged["run_ms"] == 2.0 and merged["reports"] == 2
    assert [k["name"] for k in merged["kernels"]] == ["conv", "copy"]  # the slowest first, as in a report
    assert merge_reports([slow_copy])["kernels"] == slow_copy["kernels"]  # one report is itself


def test_merge_reports_refuses_reports_of_different_builds():
    from convopt.report import merge_reports

    report = _report_of({"conv": 1e-3, "copy": 1e-3}, [50e9], run_ms=2.0)
    other = {**report, "kernels": report["kernels"][:1]}
    with pytest.raises(ValueError, match="different builds"):
        merge_reports([report, other])
    with pytest.raises(ValueError, match="different builds"):
        merge_reports([report, {**report, "model": "other"}])
    with pytest.raises(ValueError, match="at least one"):
        merge_reports([])


def test_merge_reports_reads_reports_saved_before_the_schedule_field_but_not_without_a_required_one():
    from convopt.report import merge_reports

    report = _report_of({"conv": 1e-3, "copy": 1e-3}, [50e9], run_ms=2.0)
    old = {**report, "kernels": [{f: v for f, v in k.items() if f != "schedule"} for k in report["kernels"]]}
    assert [k["schedule"] for k in merge_reports([old])["kernels"]] == ["", ""]
    broken = {**report, "kernels": [{f: v for f, v in k.items() if f != "flops"} for k in report["kernels"]]}
    with pytest.raises(KeyError, match="flops"):
        merge_reports([broken])
