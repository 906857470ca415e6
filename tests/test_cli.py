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
