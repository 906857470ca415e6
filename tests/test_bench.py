"""The benchmark harness: worker protocol, errors, repeated contenders, ratios (never timing values).

Each compare_model call starts one worker process per contender (about 2 s each), so the tiny models
in tests/bench_models.py are timed for 0.2 s in one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from convopt.bench import (best_of, compare_model, compare_model_in_turns, entry_keys, geomean, self_check_warnings,
                           time_ratios, turn_order)
from convopt.bench_worker import serve
from convopt.cli import main

MODELS = Path(__file__).with_name("bench_models.py")
TINY = f"{MODELS}:tiny_net"
SHAPE = (1, 3, 8, 8)


@pytest.fixture(scope="module")
def tiny_results():
    return compare_model(TINY, ["convopt-torch", "eager"], seconds=0.2, processes=1, input_shape=SHAPE)


def test_worker_reports_timing_and_output_check(tiny_results):
    assert list(tiny_results) == ["convopt-torch", "eager"]
    for result in tiny_results.values():
        assert "error" not in result, result
        assert result["runs"] >= 3 and result["min_ms"] <= result["median_ms"]
        assert result["process_medians_ms"] == [result["median_ms"]]
        assert result["relative_error"] < 1e-5 and result["prepare_s"] >= 0
    assert tiny_results["eager"]["relative_error"] == 0


def test_workers_build_the_same_weights_and_input(tiny_results):
    assert len({r["reference_digest"] for r in tiny_results.values()}) == 1
    assert self_check_warnings(tiny_results) == []


def test_failing_contender_is_reported_not_fatal():
    results = compare_model(f"{MODELS}:not_exportable_net", ["ort"], seconds=0.2, processes=2, input_shape=SHAPE)
    assert results["ort"] == {"error": "RuntimeError: this model cannot be exported"}


def test_crashed_worker_is_reported():
    results = compare_model(f"{MODELS}:crashing_net", ["eager"], seconds=0.2, processes=1, input_shape=SHAPE)
    assert results["eager"]["error"].startswith("worker exited with code 3")


def test_unknown_contender_fails_before_any_process():
    with pytest.raises(ValueError, match="unknown contender.*'ortt'"):
        compare_model(TINY, ["eager", "ortt"], input_shape=SHAPE)


def test_repeated_contender_runs_twice_from_the_cli(capsys):
    assert main(["bench", TINY, "--input-shape", "1,3,8,8", "--convopt", "eager", "--vs", "eager",
                 "--seconds", "0.2", "--processes", "1"]) == 0
    out = capsys.readouterr().out
    assert "| eager |" in out and "| eager#2 |" in out and "each contender alone in its own process" in out


def test_turns_time_every_contender_in_each_turn_from_one_process():
    turns = []
    results = compare_model_in_turns(TINY, ["convopt-torch", "eager", "eager"], seconds=0.3, turns=3,
                                     input_shape=SHAPE, progress=turns.append)
    assert list(results) == ["convopt-torch", "eager", "eager#2"]
    for result in results.values():
        assert "error" not in result, result
        assert len(result["turn_medians_ms"]) == 3 and result["runs"] >= 9
        assert result["min_ms"] <= result["median_ms"] and result["process_medians_ms"] == [result["median_ms"]]
        assert result["relative_error"] < 1e-5
    assert len({r["reference_digest"] for r in results.values()}) == 1
    assert [line for line in turns if " turn " in line][-1].startswith(f"{TINY} turn 3/3: convopt-torch ")


def test_turns_report_a_failing_or_crashed_contender_and_time_the_rest():
    results = compare_model_in_turns(f"{MODELS}:not_exportable_net", ["ort", "eager"], seconds=0.2, turns=2,
                                     input_shape=SHAPE)
    assert results["ort"] == {"error": "RuntimeError: this model cannot be exported"}
    assert len(results["eager"]["turn_medians_ms"]) == 2
    crashed = compare_model_in_turns(f"{MODELS}:crashing_net", ["eager"], seconds=0.2, turns=2, input_shape=SHAPE)
    assert crashed["eager"]["error"].startswith("worker exited with code 3")
    with pytest.raises(ValueError, match="at least one turn"):
        compare_model_in_turns(TINY, ["eager"], turns=0, input_shape=SHAPE)


def test_turn_order_rotates_so_no_contender_always_follows_the_same_one():
    keys = ["convopt", "ort", "openvino"]
    assert [turn_order(keys, t) for t in range(4)] == [keys, ["ort", "openvino", "convopt"],
                                                       ["openvino", "convopt", "ort"], keys]


def test_serve_answers_each_turn_and_stops_at_quit_or_a_bad_command():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()  # serve sets the benchmark's thread count in this process
    try:
        _serve_protocol()
    finally:
        torch.set_num_threads(threads)


def _serve_protocol():
    answers = []
    serve(TINY, "eager", SHAPE, 0, iter(["run 0.02\n", "run 0.01\n", "quit\n", "run 1\n"]), answers.append)
    assert answers[0]["relative_error"] == 0 and "reference_digest" in answers[0]
    assert len(answers) == 3 and all(len(a["times"]) >= 3 for a in answers[1:])
    answers.clear()
    serve(TINY, "eager", SHAPE, 0, iter(["go\n", "run 1\n"]), answers.append)
    assert len(answers) == 2 and "unknown command 'go'" in answers[1]["error"]
    answers.clear()
    serve(f"{MODELS}:not_exportable_net", "ort", SHAPE, 0, iter(["run 1\n"]), answers.append)
    assert answers == [{"error": "RuntimeError: this model cannot be exported"}]


def test_turns_from_the_cli(capsys):
    assert main(["bench", TINY, "--input-shape", "1,3,8,8", "--convopt", "eager", "--vs", "eager",
                 "--seconds", "0.2", "--turns", "2"]) == 0
    out = capsys.readouterr().out
    assert "| eager#2 |" in out and "given the cores in 2 interleaved turns each" in out


def test_entry_keys_number_repeats():
    assert entry_keys(["convopt", "ort", "ort", "eager", "ort"]) == ["convopt", "ort", "ort#2", "eager", "ort#3"]


def test_self_check_warns_when_repeats_disagree_by_more_than_5_percent():
    agree = {"ort": {"median_ms": 10.0}, "ort#2": {"median_ms": 10.4}, "eager": {"median_ms": 30.0}}
    disagree = {"ort": {"median_ms": 10.0}, "ort#2": {"median_ms": 11.0}, "eager": {"error": "x"}}
    assert self_check_warnings(agree) == []
    [warning] = self_check_warnings(disagree)
    assert warning.startswith("warning: ort and ort#2 differ by 10%")


def test_self_check_warns_about_different_references():
    results = {"a": {"median_ms": 1.0, "reference_digest": "x"}, "b": {"median_ms": 2.0, "reference_digest": "y"}}
    assert any("different weights or inputs" in w for w in self_check_warnings(results))


def test_best_of_keeps_the_lowest_median_and_all_medians():
    best = best_of([{"median_ms": 12.0, "runs": 5}, {"median_ms": 10.0, "runs": 6}])
    assert best == {"median_ms": 10.0, "runs": 6, "process_medians_ms": [12.0, 10.0]}
    assert best_of([{"median_ms": 1.0}, {"error": "boom"}]) == {"error": "boom"}


def test_time_ratios_and_geomean():
    results = {"convopt": {"median_ms": 10.0}, "ort": {"median_ms": 20.0}, "eager": {"error": "x"}}
    assert time_ratios(results, "convopt") == {"ort": 0.5}
    assert time_ratios({"convopt": {"error": "x"}, "ort": {"median_ms": 1.0}}, "convopt") == {}
    assert geomean([0.5, 2.0]) == pytest.approx(1.0)
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)


def test_ratios_of_entries_timed_in_turns_pair_their_turns():
    # a phase of the host doubles every contender's time in the second turn: the pairs cancel it
    results = {"convopt": {"median_ms": 2.0, "turn_medians_ms": [1.0, 2.0, 1.0]},
               "ort": {"median_ms": 3.0, "turn_medians_ms": [2.0, 4.0, 2.0]},
               "ort#2": {"median_ms": 4.0, "turn_medians_ms": [2.05, 4.1, 2.05]},
               "eager": {"median_ms": 4.0}}
    ratios = time_ratios(results, "convopt")
    assert ratios["ort"] == pytest.approx(0.5) and ratios["ort#2"] == pytest.approx(1 / 2.05)
    assert ratios["eager"] == pytest.approx(0.5)  # no turns: the medians
    assert self_check_warnings(results) == []  # 2.5% apart turn by turn, though their medians are 33% apart
    results["ort#2"]["turn_medians_ms"] = [2.0, 4.0, 2.6]
    [warning] = self_check_warnings(results)
    assert warning.startswith("warning: ort and ort#2 differ by 9%")


def _compare_script():
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare_script", path)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    return compare


def test_compare_merge_pools_the_turns_of_runs_in_turns(tmp_path):
    import json

    compare = _compare_script()
    runs = []
    for i, (a, b, c) in enumerate([([1.0, 2.0], [2.0, 4.0], [1.0, 2.0]), ([3.0], [3.0], [6.0])]):
        results = {"timm:m": {key: {"median_ms": min(t), "process_medians_ms": [min(t)], "turn_medians_ms": t}
                              for key, t in (("convopt", a), ("ort", b), ("openvino", c))}}
        runs.append(tmp_path / f"run{i}.json")
        runs[-1].write_text(json.dumps({"meta": {"seconds": 1.0, "turns": len(a)}, "results": results}))
    pooled, _ = compare.merge_runs([str(p) for p in runs])
    assert pooled["timm:m"]["ort"]["turn_medians_ms"] == [2.0, 4.0, 3.0]
    out = tmp_path / "merged"
    assert compare.main(["--merge", ",".join(map(str, runs)), "--vs", "ort,openvino", "--out", str(out)]) == 0
    text = (tmp_path / "merged.md").read_text()
    assert "runs in turns pooled" in text
    # convopt / ort: (0.5 0.5 1)^(1/3); / openvino: (1 1 0.5)^(1/3), the faster peer (the larger ratio)
    assert f"ort {0.25 ** (1 / 3):.3f}, openvino {0.5 ** (1 / 3):.3f}, the faster peer of each model " \
           f"{0.5 ** (1 / 3):.3f}" in text


def test_compare_merge_pools_the_process_medians_of_runs(tmp_path):
    import json

    compare = _compare_script()
    runs = []
    for i, (a, b, c) in enumerate([((3.0, 2.5), (5.0,), (4.0,)), ((2.0, 4.0), (6.0, 4.5), (3.0, 5.0))]):
        results = {"timm:m": {"convopt": {"median_ms": min(a), "process_medians_ms": list(a)},
                              "ort": {"median_ms": min(b), "process_medians_ms": list(b)},
                              "openvino": {"median_ms": min(c), "process_medians_ms": list(c)}}}
        runs.append(tmp_path / f"run{i}.json")
        meta = {"seconds": 0.5 + i, "input_shape": "1,3,64,64"}
        runs[-1].write_text(json.dumps({"meta": meta, "command": "x", "results": results}))
    pooled, fewest = compare.merge_runs([str(p) for p in runs])
    assert pooled["timm:m"]["convopt"]["median_ms"] == 2.0 and pooled["timm:m"]["ort"]["median_ms"] == 4.5
    assert pooled["timm:m"]["convopt"]["process_medians_ms"] == [3.0, 2.5, 2.0, 4.0] and fewest == 3
    out = tmp_path / "merged"
    assert compare.main(["--merge", ",".join(map(str, runs)), "--vs", "ort,openvino", "--out", str(out)]) == 0
    text = (tmp_path / "merged.md").read_text()
    assert "runs pooled" in text
    # the pooled runs' settings, not the parser's defaults (4 s, 224 px)
    assert "over 0.5 s of calls" in text and "input 1,3,64,64" in text and "--seconds" not in text
    # convopt 2.0 ms against ort 4.5 and openvino 3.0: the faster peer per model is openvino
    assert "ort 0.444, openvino 0.667, the faster peer of each model 0.667" in text
