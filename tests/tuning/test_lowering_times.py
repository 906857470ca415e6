"""lowering_times.json: written by a tuning job, read by optimize() to choose lowerings; a corrupt or foreign
file is ignored with a warning, never a crash."""

import json

import pytest

import convopt
from convopt.ir import Op
from convopt.schedules.conv_spec import ConvSpec, conv_spec_of
from convopt.target import resolve_target
from convopt.tuning.lowering_times import (FORMAT, TIMES, default_times, kernel_variants, measured_lowerings,
                                           read_times, write_times)
from convopt.tuning.records import records_dir

TARGET = resolve_target("cpu")


def _entry(default_us, best_us, epilogue="relu"):
    return {epilogue: {"default_us": default_us, "best_us": best_us, "trials": 5}}


def test_spec_keys_round_trip():
    spec = ConvSpec(2, 16, 12, 10, 32, (3, 5), (2, 1), (1, 2), (1, 1), 4)
    assert ConvSpec.from_key(spec.key()) == spec
    with pytest.raises(ValueError, match="not a conv spec key"):
        ConvSpec.from_key("16->32 3x3 @12x12")


def test_written_entries_merge_and_the_fastest_folder_wins(tmp_path):
    a, b = records_dir(TARGET, tmp_path / "a"), records_dir(TARGET, tmp_path / "b")
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    key = ConvSpec(1, 16, 12, 12, 16, (3, 3), padding=(1, 1)).key()
    write_times(a, TARGET, {key: {"direct": _entry(20.0, 18.0)}})
    write_times(a, TARGET, {key: {"im2win": _entry(15.0, 15.0)}})  # merged, not replaced
    write_times(a, TARGET, {key: {"im2win": _entry(25.0, 25.0, "relu+residual")}})
    assert read_times(a, TARGET)[key].keys() == {"direct", "im2win"}
    assert read_times(a, TARGET)[key]["im2win"].keys() == {"relu", "relu+residual"}
    write_times(b, TARGET, {key: {"direct": _entry(30.0, 12.0)}})
    measured = measured_lowerings(TARGET, [tmp_path / "a", tmp_path / "b"])
    assert measured[key] == {"direct": {"relu": pytest.approx(12e-6)},
                             "im2win": {"relu": pytest.approx(15e-6), "relu+residual": pytest.approx(25e-6)}}
    defaults = sorted((s.key(), name, t) for s, name, t in default_times(TARGET, [tmp_path / "a", tmp_path / "b"]))
    assert defaults == [(key, "direct", pytest.approx(20e-6)), (key, "im2win", pytest.approx(15e-6)),
                        (key, "im2win", pytest.approx(25e-6))]


@pytest.mark.parametrize("content, reason", [
    ("{not json", "Expecting"),
    (json.dumps({"format": "something else", "convs": {}}), "not a convopt-lowering-times-1 file"),
    (json.dumps({"format": FORMAT, "target": "llvm-other-2c", "convs": {}}), "made for target 'llvm-other-2c'"),
    (json.dumps({"format": FORMAT, "target": TARGET.key,
                "convs": {"k": {"direct": {"relu": {"best_us": -1, "default_us": 1}}}}}),
     "non-positive"),
])
def test_a_corrupt_or_foreign_file_is_ignored_with_a_warning_naming_it(tmp_path, content, reason):
    folder = records_dir(TARGET, tmp_path)
    folder.mkdir(parents=True)
    (folder / TIMES).write_text(content)
    with pytest.warns(UserWarning, match=reason) as caught:
        assert measured_lowerings(TARGET, [tmp_path]) == {}
    assert str(folder / TIMES) in str(caught[0].message)


def test_kernel_variants_name_the_layout_each_kernel_ran_in(tiny):
    model, x = tiny
    graph = convopt.optimize(model, x, lowering="direct", tuning_logs=False, check=False).graph
    convs = [n for n in graph.nodes if n.op is Op.CONV2D]
    found = kernel_variants(graph, "direct", [n.name for n in convs])
    # the 16-channel convs between convs are blocked for 8 and 16 lanes alike, with their ReLU fused; the stem
    # reads the NCHW input and writes a blocked output
    stem, inner = (conv_spec_of(graph, n).key() for n in convs[:2])
    assert found == [(stem, "direct@blocked-output", "relu")] + [(inner, "direct@blocked", "relu")] * 2


def test_a_stems_measurements_are_looked_up_for_select_lowering_but_not_refitted(tmp_path):
    folder = records_dir(TARGET, tmp_path)
    folder.mkdir(parents=True)
    key = ConvSpec(1, 3, 32, 32, 16, (3, 3), (2, 2), (1, 1)).key()
    write_times(folder, TARGET, {key: {"direct@blocked-output": _entry(20.0, 18.0), "im2col": _entry(30.0, 30.0)}})
    assert measured_lowerings(TARGET, [tmp_path])[key]["direct@blocked-output"] == {"relu": pytest.approx(18e-6)}
    assert [name for _, name, _ in default_times(TARGET, [tmp_path])] == ["im2col"]
