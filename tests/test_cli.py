import pytest

from convopt.cli import main

MODEL_FILE = '''
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.1))
'''


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    return f"{path}:build"


def test_dump_after_each_pass(model_file, tmp_path, capsys):
    out = tmp_path / "dumps"
    assert main(["dump", model_file, "--input-shape", "1,3,8,8", "--after-each-pass", str(out)]) == 0
    # canonicalize drops the eval-mode dropout, fold_conv_bn folds the BatchNorm (and its sweep's DCE
    # drops num_batches_tracked), so the final eliminate_dead_code has nothing left to do
    assert sorted(p.name for p in out.iterdir()) == ["000_capture.ir", "001_canonicalize.ir", "003_fold_conv_bn.ir"]
    text = capsys.readouterr().out
    assert text.startswith("graph Sequential(%input: f32[1,3,8,8]) {") and "batch_norm" in text


def test_dump_dot(model_file, tmp_path):
    path = tmp_path / "g.dot"
    assert main(["dump", model_file, "--input-shape", "1,3,8,8", "--format", "dot", "-o", str(path)]) == 0
    assert path.read_text().startswith("digraph")


def test_optimize_summary(model_file, capsys):
    assert main(["optimize", model_file, "--input-shape", "1,3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "4 ops -> 2 ops" in out and "identity" in out and "batch_norm" in out and "check: matches eager" in out


def test_bad_model_spec_is_a_clear_error(capsys):
    assert main(["dump", "nosuchthing"]) == 2
    assert "expected timm:NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_dump_timm_resnet18(tmp_path):
    assert main(["dump", "timm:resnet18", "--after-each-pass", str(tmp_path), "-o", str(tmp_path / "final.ir")]) == 0
    assert (tmp_path / "000_capture.ir").read_text().count("conv2d(") == 20


def test_calibrate_from_logs_refits_from_lowering_times(tmp_path, capsys, monkeypatch):
    import json

    from convopt.cost.model import predict
    from convopt.cost.profile import load_profile
    from convopt.schedules.conv_spec import ConvSpec
    from convopt.target import resolve_target
    from convopt.tuning.lowering_times import FORMAT, TIMES
    from convopt.tuning.records import records_dir

    target = resolve_target("cpu")
    profile = load_profile(target)
    specs = [ConvSpec(1, c, 28, 28, c, (3, 3), padding=(1, 1)) for c in (16, 32, 48)]
    convs = {s.key(): {"direct": {"relu": {"default_us": 2e6 * predict("direct", s, profile, target.lanes),
                                           "best_us": 1.0, "trials": 3}}} for s in specs}
    folder = records_dir(target, tmp_path / "logs")
    folder.mkdir(parents=True)
    (folder / TIMES).write_text(json.dumps({"format": FORMAT, "target": target.key, "convs": convs}))
    out = tmp_path / "profile.json"
    assert main(["calibrate", "--from-logs", str(tmp_path / "logs"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 measurements" in printed and "direct" in printed
    refitted = json.loads(out.read_text())["coefficients"]["direct"]
    assert refitted["flops"] == pytest.approx(2 * profile.coefficients["direct"]["flops"], rel=1e-6)
    assert main(["calibrate", "--from-logs", str(tmp_path / "empty")]) == 1  # nothing to fit: says so


def test_calibrate_refit_fits_the_profile_its_measurements_belong_to(tmp_path, capsys):
    import json
    import shutil

    from convopt.cost.profile import SHIPPED_PROFILES

    stored = sorted((SHIPPED_PROFILES / "measurements").glob("*.json"))[0]
    (tmp_path / "measurements").mkdir()
    copy = shutil.copy(stored, tmp_path / "measurements" / stored.name)
    shutil.copy(SHIPPED_PROFILES / stored.name, tmp_path / stored.name)
    data = json.loads(stored.read_text())
    for record in data["measurements"]:  # every direct kernel twice as slow as measured
        record["seconds"] *= 2 if record["lowering"] == "direct" else 1
    (tmp_path / "measurements" / stored.name).write_text(json.dumps(data))
    assert main(["calibrate", "--refit", str(copy)]) == 0
    assert "wrote" in capsys.readouterr().out
    before = json.loads((SHIPPED_PROFILES / stored.name).read_text())["coefficients"]
    after = json.loads((tmp_path / stored.name).read_text())["coefficients"]
    assert sum(after["direct"].values()) > 1.5 * sum(before["direct"].values())  # written in place, refitted
    assert after["fused_inverted_residual"] == before["fused_inverted_residual"]  # not a conv lowering: kept
    (tmp_path / stored.name).unlink()
    assert main(["calibrate", "--refit", str(copy)]) == 1  # no profile to refit: says so


def test_calibrate_missing_measures_only_what_the_earlier_measurements_lack(tmp_path, capsys, monkeypatch):
    """`convopt calibrate --missing` joins the measurements beside the output and measures the rest."""
    import json

    import convopt.cost.calibrate as cal
    from convopt.cost.calibrate import CALIBRATION_SHAPES, all_variants, save_measurements, variants
    from convopt.target import resolve_target

    target = resolve_target("cpu")
    out = tmp_path / f"{target.key}.json"
    lowerings = ["direct", "im2col"]
    known = [{"lowering": name, "spec": spec.key(), "seconds": 1e-4}
             for spec in CALIBRATION_SHAPES[1:] for name in variants(spec, lowerings, target.lanes)]
    save_measurements(known, target, cal.measurements_path(out))
    asked = []
    monkeypatch.setattr(cal, "measure", lambda spec, names, target: asked.append(spec) or {n: 2e-4 for n in names})
    assert main(["calibrate", "--missing", "--lowerings", ",".join(lowerings), "--passes", "1", "-o", str(out)]) == 0
    assert asked == [CALIBRATION_SHAPES[0]] and "joining" in capsys.readouterr().out
    stored = json.loads(cal.measurements_path(out).read_text())["measurements"]
    assert len(stored) == len(known) + len(variants(CALIBRATION_SHAPES[0], lowerings, target.lanes))
    assert out.is_file() and set(all_variants()) >= {r["lowering"] for r in stored}


BLOCK_FILE = '''
from torch import nn

def build():  # an inverted residual (its module: "1")
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.expand, self.dw = nn.Conv2d(32, 128, 1), nn.Conv2d(128, 128, 3, padding=1, groups=128)
            self.project = nn.Conv2d(128, 32, 1)

        def forward(self, x):
            return self.project(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(x))))) + x

    return nn.Sequential(nn.Conv2d(3, 32, 1), Block())
'''


def test_fuse_block_forces_a_block(tmp_path, capsys, monkeypatch):
    import convopt.cost.fused

    monkeypatch.setattr(convopt.cost.fused, "FUSED_MARGIN", 1e9)  # the cost model fuses nothing
    path = tmp_path / "block.py"
    path.write_text(BLOCK_FILE)
    dumps = {}
    for extra in ([], ["--fuse-block", "1"]):
        out = tmp_path / f"dump{len(extra)}.ir"
        args = ["dump", f"{path}:build", "--input-shape", "1,3,4,4", "--target", "cpu", "-o", str(out), *extra]
        assert main(args) == 0
        dumps[bool(extra)] = out.read_text().count("= fused_block(")
    assert dumps == {False: 0, True: 1}


def test_calibrate_weight_stream_measures_only_that_rate(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import convopt.cost.weight_stream as ws
    from convopt.cost.profile import MachineProfile
    from convopt.schedules.conv_spec import ConvSpec

    measured = ws.calibrate_weight_stream  # measured on a small case past an L3 said to be 4 MB (the host's may be 480)
    small = ((ConvSpec(1, 32, 8, 8, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1), "winograd2"),)
    monkeypatch.setattr(ws, "calibrate_weight_stream", lambda profile, target, progress=None: measured(
        profile, replace(target, caches={**target.caches, "L3": 4 << 20}), cases=small, progress=progress))
    out = tmp_path / "profile.json"
    assert main(["calibrate", "--weight-stream", "-o", str(out)]) == 0
    assert "weights streamed from memory at" in capsys.readouterr().out
    profile = MachineProfile.from_json(out.read_text())
    assert profile.stream_bandwidth > 0 and "stream_bandwidth" in profile.fitted_here
    assert not (tmp_path / "measurements").exists()  # no conv lowering measured
    # an existing profile (this machine's own calibration) keeps everything but the rate
    from tests.cost.profiles import fixed_profile
    from convopt.cost.profile import save_profile

    own = fixed_profile(direct={"flops": 7.0})
    save_profile(own, out)
    assert main(["calibrate", "--weight-stream", "-o", str(out)]) == 0
    again = MachineProfile.from_json(out.read_text())
    assert again.coefficients == own.coefficients and again.bandwidth == own.bandwidth and again.stream_bandwidth > 0
    assert main(["calibrate", "--weight-stream", "--missing", "-o", str(out)]) == 2


def test_calibrate_missing_measures_the_stream_rate_only_where_the_output_lacks_it(tmp_path, monkeypatch):
    import convopt.cost.calibrate as cal
    import convopt.cost.weight_stream as ws
    from convopt.cost.calibrate import CALIBRATION_SHAPES, all_variants, save_measurements, variants
    from convopt.cost.profile import MachineProfile, save_profile
    from convopt.target import resolve_target
    from tests.cost.profiles import fixed_profile

    target = resolve_target("cpu")
    out = tmp_path / f"{target.key}.json"
    known = [{"lowering": name, "spec": spec.key(), "seconds": 1e-4}
             for spec in CALIBRATION_SHAPES for name in variants(spec, all_variants(), target.lanes)]
    save_measurements(known, target, cal.measurements_path(out))  # nothing missing: no conv measured
    monkeypatch.setattr(cal, "measure", lambda spec, names, target: pytest.fail(f"measured {spec}"))
    measured = []
    monkeypatch.setattr(ws, "calibrate_weight_stream", lambda profile, target, progress=None: measured.append(1)
                        or profile.with_fitted(profile.coefficients, ["stream_bandwidth"], stream_bandwidth=3e10))
    save_profile(fixed_profile(), out)  # an output without a measured rate: measured
    assert main(["calibrate", "--missing", "-o", str(out)]) == 0 and measured == [1]
    assert MachineProfile.from_json(out.read_text()).stream_bandwidth == 3e10
    assert main(["calibrate", "--missing", "-o", str(out)]) == 0 and measured == [1]  # measured for it: kept
    assert MachineProfile.from_json(out.read_text()).stream_bandwidth == 3e10
