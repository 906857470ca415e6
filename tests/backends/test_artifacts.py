"""A saved artifact that can't run here is refused with an ArtifactError that says what to do, and never
crashes the process: damaged or swapped files, another format version, another machine's CPU features."""

import json
import shutil

import pytest
import torch
from torch import nn

import convopt
from convopt import ArtifactError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    folder = tmp_path_factory.mktemp("artifact") / "good"
    convopt.optimize(model, x).save(folder)
    other = tmp_path_factory.mktemp("artifact") / "other"
    convopt.optimize(nn.Sequential(nn.Conv2d(3, 4, 1)).eval(), x).save(other)
    return folder, other, model, x


def damaged(saved, tmp_path, change):
    folder = tmp_path / "damaged"
    shutil.copytree(saved[0], folder)
    change(folder)
    return folder


def edit_meta(edit):
    def change(folder):
        meta = json.loads((folder / "meta.json").read_text())
        edit(meta)
        (folder / "meta.json").write_text(json.dumps(meta))
    return change


def test_the_good_artifact_loads_and_matches(saved):
    folder, _, model, x = saved
    with torch.no_grad():
        assert torch.allclose(convopt.load(folder)(x), model(x), atol=1e-5, rtol=1e-5)


CASES = {
    "meta.json is not JSON": (lambda f: (f / "meta.json").write_text("{not json"), r"meta.json is not valid JSON"),
    "truncated library": (lambda f: (f / "model.so").write_bytes((f / "model.so").read_bytes()[:1000]),
                          r"model.so is not the file this artifact was saved with"),
    "edited IR": (lambda f: (f / "graph.ir").write_text((f / "graph.ir").read_text().replace("relu", "tanh")),
                  r"graph.ir is not the file"),
    "another format version": (edit_meta(lambda m: m.update(format="convopt-artifact-0")),
                               r"artifact format 'convopt-artifact-0'; this convopt reads 'convopt-artifact-2'"),
    "missing keys": (edit_meta(lambda m: m.pop("in_spec")), r"lacks in_spec"),
    "another machine's CPU features": (
        edit_meta(lambda m: m["target"].update(mcpu="sapphirerapids", mattr=["+amx-tile", "+avx512f"])),
        r"built for llvm-sapphirerapids-.*amx.*which this machine can't run"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_artifact_is_refused_with_what_to_do(saved, tmp_path, case):
    change, message = CASES[case]
    folder = damaged(saved, tmp_path, change)
    if case == "another machine's CPU features" and "amx-tile" in open("/proc/cpuinfo").read():
        pytest.skip("this machine has AMX")
    with pytest.raises(ArtifactError, match=message):
        convopt.load(folder)


def test_a_library_swapped_in_from_another_artifact_is_refused(saved, tmp_path):
    folder = damaged(saved, tmp_path, lambda f: shutil.copy(saved[1] / "model.so", f / "model.so"))
    with pytest.raises(ArtifactError, match="checksum differs"):
        convopt.load(folder)


def test_an_artifact_without_checksums_is_refused_before_its_library_is_opened(saved, tmp_path):
    def change(folder):  # dlopen of this truncated library would kill the process with a bus error
        edit_meta(lambda m: m.pop("sha256"))(folder)
        (folder / "model.so").write_bytes((folder / "model.so").read_bytes()[:4096])

    with pytest.raises(ArtifactError, match=r"lacks sha256.*save the model again"):
        convopt.load(damaged(saved, tmp_path, change))


def test_a_missing_file_names_it(saved, tmp_path):
    folder = damaged(saved, tmp_path, lambda f: (f / "graph.ir").unlink())
    with pytest.raises(FileNotFoundError, match="missing graph.ir"):
        convopt.load(folder)
