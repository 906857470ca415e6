"""Choosing a kernel's schedule from its records: by median, with a margin over the default; which folders."""

import types
import warnings

import pytest

from convopt.target import resolve_target
from convopt.tuning import apply
from convopt.tuning.apply import MIN_GAIN, choose, default_log_dirs
from convopt.tuning.records import RECORDS


def _record(trace: str, seconds: float):
    return types.SimpleNamespace(trace=trace, run_secs=[seconds, seconds])


def test_the_fastest_schedule_by_median_wins():
    records = [_record("default", 10e-6), _record("a", 8e-6), _record("b", 5e-6), _record("b", 9e-6),
               _record("b", 9.5e-6)]
    choice = choose(records, "default")
    assert choice.trace == "a" and choice.best_s == pytest.approx(8e-6) and choice.default_s == pytest.approx(10e-6)


def test_a_gain_within_the_noise_keeps_the_default():
    close = 10e-6 / MIN_GAIN * 1.001
    choice = choose([_record("default", 10e-6), _record("a", close)], "default")
    assert choice.trace is None and choice.best_s == choice.default_s == pytest.approx(10e-6)
    assert choose([_record("default", 10e-6)], "default").trace is None


def test_only_each_schedules_latest_measurements_count():
    """A workload's records pile up over jobs run in other hours of a shared machine: a schedule measured fast
    in an earlier job, then side by side with the default in the last job's confirmation no faster, keeps the
    default (pooled, its median was the old hour's)."""
    earlier = [_record("default", 10e-6), _record("a", 7e-6), _record("a", 7.2e-6), _record("a", 7.1e-6)]
    confirmed = [_record("default", 9e-6), _record("a", 9.4e-6), _record("default", 9.1e-6), _record("a", 9.3e-6)]
    choice = choose(earlier + confirmed, "default")
    assert apply.RECENT == 2 and choice.trace is None and choice.default_s == pytest.approx(9.05e-6)
    assert choose(earlier + confirmed, "default", recent=None).trace == "a"  # every record: the old hour wins
    # a schedule measured faster in the last job's confirmation wins on those measurements
    faster = [_record("default", 9e-6), _record("a", 7.4e-6), _record("default", 9.1e-6), _record("a", 7.6e-6)]
    choice = choose(earlier + faster, "default")
    assert choice.trace == "a" and choice.best_s == pytest.approx(7.5e-6)


def test_records_without_a_measured_default_still_apply():
    choice = choose([_record("a", 8e-6), _record("b", 6e-6)], "default")
    assert choice.trace == "b" and choice.default_s is None


def test_log_folders_in_order_each_once(tmp_path, monkeypatch):
    env, extra = tmp_path / "env", tmp_path / "extra"
    env.mkdir(), extra.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(apply, "SHIPPED_LOGS", tmp_path / "missing")
    monkeypatch.setenv(apply.ENV_LOGS, str(env))
    assert default_log_dirs() == [env]
    assert default_log_dirs([extra, env]) == [env, extra]
    (tmp_path / "tuning_logs").mkdir()
    assert [p.name for p in default_log_dirs(extra)] == ["env", "tuning_logs", "extra"]


def test_only_other_targets_records_give_a_warning_naming_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(apply, "SHIPPED_LOGS", tmp_path / "missing")
    monkeypatch.delenv(apply.ENV_LOGS, raising=False)
    monkeypatch.setattr(apply, "_WARNED", set())
    other = resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    here = resolve_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    (tmp_path / "logs" / other.key).mkdir(parents=True)
    (tmp_path / "logs" / other.key / RECORDS).write_text("")
    with pytest.warns(UserWarning, match=f"tuning records exist for {other.key} but not for this target"):
        found = apply.TunedSchedules.for_target(here, tmp_path / "logs")
    assert not found
    monkeypatch.setattr(apply, "SHIPPED_LOGS", tmp_path / "logs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped records of another machine are no news
        apply.TunedSchedules.for_target(here, tmp_path / "logs")


def test_records_read_for_another_target_are_refused_by_optimize():
    import torch

    import convopt

    other = resolve_target({"kind": "llvm", "mcpu": "haswell" if resolve_target("cpu").lanes == 16 else
                            "skylake-avx512", "num-cores": 2})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)).eval()
    with pytest.raises(ValueError, match=f"records of {other.key}, not of the target"):
        convopt.optimize(model, torch.randn(1, 3, 8, 8), tuning_logs=apply.TunedSchedules(other, []))
