"""Tuning records per target key: created, counted for resume, torn last lines repaired, corrupt and foreign
files skipped with a warning naming them, other targets' records never applied."""

import json
import warnings

import pytest
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms

from convopt.target import resolve_target
from convopt.tuning.records import (RECORDS, WORKLOADS, CorruptRecords, check, open_database, other_keys,
                                    records_dir, trials_done)

AVX512 = resolve_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
AVX2 = resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def _workload(n: int = 64) -> tvm.IRModule:
    a = te.placeholder((n,), name="a")
    b = te.compute((n,), lambda i: a[i] * 2.0, name="b")
    return tvm.IRModule({"main": te.create_prim_func([a, b])})


def _commit(database, mod, target, seconds: float) -> None:
    sch = tvm.s_tir.Schedule(mod)
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    record = ms.database.TuningRecord(sch.trace, database.commit_workload(mod), [seconds], target.tvm,
                                      ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
    database.commit_tuning_record(record)


def test_records_live_in_a_folder_per_target_key_and_count_for_resume(tmp_path):
    assert open_database(AVX512, tmp_path) is None  # nothing tuned yet
    db = open_database(AVX512, tmp_path, create=True)
    mod = _workload()
    assert trials_done(db, mod) == 0
    for seconds in (3e-6, 2e-6, 4e-6):
        _commit(db, mod, AVX512, seconds)
    folder = records_dir(AVX512, tmp_path)
    assert folder.name == AVX512.key and (folder / RECORDS).is_file() and (folder / WORKLOADS).is_file()
    reopened = open_database(AVX512, tmp_path)
    assert trials_done(reopened, mod) == 3 and trials_done(reopened, _workload(32)) == 0
    assert check(folder, AVX512) == 3
    assert other_keys(AVX2, tmp_path) == [AVX512.key] and other_keys(AVX512, tmp_path) == []
    assert open_database(AVX2, tmp_path) is None  # another target's records are never applied


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_rest_kept(tmp_path):
    db = open_database(AVX512, tmp_path, create=True)
    mod = _workload()
    _commit(db, mod, AVX512, 2e-6)
    _commit(db, mod, AVX512, 3e-6)
    path = records_dir(AVX512, tmp_path) / RECORDS
    text = path.read_text()
    path.write_text(text + text.splitlines()[0][: len(text) // 3])  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        db = open_database(AVX512, tmp_path)
    assert trials_done(db, mod) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_database(AVX512, tmp_path)  # repaired on disk: no second warning


@pytest.mark.parametrize("damage,reason", [
    (lambda lines: ["not json at all"] + lines, "line 1 is not JSON"),
    (lambda lines: ['{"a": 1}'] + lines, "not a MetaSchedule tuning record"),
    (lambda lines: [json.dumps([7, json.loads(lines[0])[1]])], "names workload 7"),
])
def test_a_corrupt_record_file_is_skipped_with_a_warning_naming_it(tmp_path, damage, reason):
    db = open_database(AVX512, tmp_path, create=True)
    _commit(db, _workload(), AVX512, 2e-6)
    path = records_dir(AVX512, tmp_path) / RECORDS
    original = path.read_text()
    path.write_text("\n".join(damage(original.splitlines())) + "\n")
    with pytest.warns(UserWarning, match=f"{RECORDS}: .*{reason}"):
        assert open_database(AVX512, tmp_path) is None
    assert path.is_file()  # never deleted


def test_records_of_another_target_in_a_folder_are_refused(tmp_path):
    folder = records_dir(AVX512, tmp_path)
    db = open_database(AVX2, tmp_path, create=True)
    _commit(db, _workload(), AVX2, 2e-6)
    records_dir(AVX2, tmp_path).rename(folder)  # copied into the wrong folder
    with pytest.raises(CorruptRecords, match=f"tuned for target {AVX2.key}, not {AVX512.key}"):
        check(folder, AVX512)
    with pytest.warns(UserWarning, match="tuning records skipped"):
        assert open_database(AVX512, tmp_path) is None


def test_packed_workloads_read_like_plain_ones_and_unpack_for_a_job(tmp_path):
    from convopt.tuning.records import PACKED, pack, read_index

    db = open_database(AVX512, tmp_path, create=True)
    mod = _workload()
    for seconds in (3e-6, 2e-6):
        _commit(db, mod, AVX512, seconds)
    folder = records_dir(AVX512, tmp_path)
    plain = (folder / WORKLOADS).read_bytes()
    before = sorted(r.seconds for r in read_index(AVX512, tmp_path).records(mod))
    pack(folder)
    assert not (folder / WORKLOADS).exists() and (folder / PACKED).is_file()
    assert sorted(r.seconds for r in read_index(AVX512, tmp_path).records(mod)) == before == [2e-6, 3e-6]
    assert read_index(AVX512, tmp_path).records(_workload(32)) == []  # another workload: no records
    db = open_database(AVX512, tmp_path)  # a job resumes: plain again, nothing lost
    assert (folder / WORKLOADS).read_bytes() == plain and not (folder / PACKED).exists()
    assert trials_done(db, mod) == 2
    pack(folder)
    (folder / PACKED).write_bytes(b"\x1f\x8b not really gzip")
    with pytest.warns(UserWarning, match="not a readable gzip file"):
        assert read_index(AVX512, tmp_path) is None


def test_prune_keeps_the_workloads_in_use_and_their_records_in_order(tmp_path):
    from convopt.tuning.records import PACKED, Pruned, pack, prune

    db = open_database(AVX512, tmp_path, create=True)
    used, stale, other = _workload(64), _workload(32), _workload(48)
    for mod, seconds in ((used, 3e-6), (stale, 1e-6), (used, 2e-6), (other, 5e-6), (used, 4e-6)):
        _commit(db, mod, AVX512, seconds)
    del db
    folder = records_dir(AVX512, tmp_path)
    pack(folder)
    before = (folder / RECORDS).read_text().splitlines()
    assert prune(AVX512, tmp_path, [used, other], dry_run=True) == Pruned(2, 1, 4, 1)
    assert (folder / RECORDS).read_text().splitlines() == before  # a dry run changes nothing
    assert prune(AVX512, tmp_path, [used, other]) == Pruned(2, 1, 4, 1)
    assert (folder / PACKED).is_file() and not (folder / WORKLOADS).is_file()  # packed again
    after = open_database(AVX512, tmp_path)
    assert (trials_done(after, used), trials_done(after, other), trials_done(after, stale)) == (3, 1, 0)
    lines = [json.loads(line) for line in (folder / RECORDS).read_text().splitlines()]
    assert [(index, body[1][0]) for index, body in lines] == [(0, 3e-6), (0, 2e-6), (1, 5e-6), (0, 4e-6)]
    assert prune(AVX512, tmp_path, [used, other]) == Pruned(2, 0, 4, 0)  # nothing left to drop
