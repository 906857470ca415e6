"""convopt report: per-kernel times of a compiled model, its JSON and roofline picture, and the CLI."""

import json
import time

import pytest
import torch
from torch import nn

import convopt
from convopt.cli import main
from convopt.report import format_table, report


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
