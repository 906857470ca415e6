import pytest

from convopt.ir import Graph, Op, parse
from convopt.ir import ops as O
from convopt.passes import canonicalize, eliminate_dead_code
from convopt.pipeline import Pass, PassError, build, run_passes, select_passes
from convopt.schedules.lowerings import LoweringError
from convopt.target import resolve_target
from tests.graphs import Builder

# A fixed two-pass pipeline, so these tests do not change when the real pipelines grow.
PASSES = (Pass("canonicalize", canonicalize), Pass("eliminate_dead_code", eliminate_dead_code))


def graph_with_identity() -> Graph:
    """canonicalize drops the identity and merges the reshapes; the unread sigmoid is left for DCE."""
    b = Builder()
    x = b.input("x", (1, 2, 4, 4))
    b.node(Op.SIGMOID, [x], O.NoAttrs(), name="unread")
    i = b.node(Op.IDENTITY, [x], O.NoAttrs(), name="copy")
    r1 = b.node(Op.RESHAPE, [i], O.ShapeAttrs((2, 16)), name="r1")
    r2 = b.node(Op.RESHAPE, [r1], O.ShapeAttrs((32,)), name="r2")
    r = b.node(Op.RELU, [r2], O.NoAttrs(), name="relu")
    return b.graph(r)


def graph_with_dead_code() -> Graph:
    b = Builder()
    x = b.input("x", (1, 2))
    b.node(Op.SIGMOID, [x], O.NoAttrs(), name="unread")
    return b.graph(b.node(Op.RELU, [x], O.NoAttrs(), name="relu"))


def graph_without_changes() -> Graph:
    b = Builder()
    x = b.input("x", (1, 2))
    return b.graph(b.node(Op.RELU, [x], O.NoAttrs(), name="relu"))


def test_dumps_only_for_passes_that_changed_the_graph(tmp_path):
    g, records = run_passes(graph_with_identity(), PASSES, dump_dir=tmp_path)
    # canonicalize sweeps end with dead-code elimination, so the final DCE pass finds nothing to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000_capture.ir", "001_canonicalize.ir"]
    assert [(r.name, r.changed) for r in records] == [("canonicalize", True), ("eliminate_dead_code", False)]
    assert str(parse((tmp_path / "001_canonicalize.ir").read_text())) == str(g)

    out = tmp_path / "dead_only"
    run_passes(graph_with_dead_code(), PASSES, dump_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["000_capture.ir", "002_eliminate_dead_code.ir"]

    out = tmp_path / "unchanged"
    run_passes(graph_without_changes(), PASSES, dump_dir=out)
    assert [p.name for p in out.iterdir()] == ["000_capture.ir"]


def test_failing_pass_is_named_with_the_passes_before_it():
    def explode(graph):
        raise KeyError("boom")

    passes = (*PASSES, Pass("explode", explode))
    with pytest.raises(PassError, match=r"pass 'explode' failed \(passes run before it: canonicalize, "
                                        r"eliminate_dead_code\): KeyError"):
        run_passes(graph_with_identity(), passes)


def test_verify_between_passes_catches_a_broken_pass():
    def break_types(graph):
        node = graph.nodes[-1]
        bad = node.__class__(node.name, node.op, node.inputs, node.attrs, node.type.__class__((9,)))
        return graph.replace(nodes=(*graph.nodes[:-1], bad))

    with pytest.raises(PassError, match=r"'break_types'.*VerifyError"):
        run_passes(graph_with_identity(), (Pass("break_types", break_types),), verify=True)
    run_passes(graph_with_identity(), (Pass("break_types", break_types),), verify=False)  # not checked


def test_records_each_pass_with_its_time(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr("convopt.pipeline.time.perf_counter", lambda: next(ticks))
    _, records = run_passes(graph_with_identity(), PASSES)
    assert [(r.name, r.seconds, r.changed) for r in records] == [
        ("canonicalize", 1, True), ("eliminate_dead_code", 1, False)]


def test_select_and_skip_by_name(monkeypatch):
    names = lambda ps: [p.name for p in ps]  # noqa: E731
    assert names(select_passes(PASSES, only=["eliminate_dead_code"])) == ["eliminate_dead_code"]
    assert names(select_passes(PASSES, skip=["canonicalize"])) == ["eliminate_dead_code"]
    assert names(build("inference", only=["fold_conv_bn", "canonicalize"])) == [
        "canonicalize", "fold_conv_bn"]  # selection keeps the pipeline's order
    with pytest.raises(ValueError, match="unknown pass 'fold'"):
        select_passes(PASSES, skip=["fold"])


def test_passes_do_not_mutate_their_input():
    g = graph_with_identity()
    before = str(g)
    for p in (*build("inference"), *build("train")):
        p.run(g)
    assert str(g) == before


CPU_AVX2 = resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def test_build_knows_the_target():
    names = lambda ps: [p.name for p in ps]  # noqa: E731
    graph_passes = ["canonicalize", "fold_constants", "fold_conv_bn", "merge_branches", "eliminate_dead_code"]
    assert names(build("inference")) == graph_passes  # torch: no conv lowerings to choose
    cpu = [*graph_passes, "fuse_blocks", "select_lowering", "block_layout", "fold_channel_scale"]
    assert names(build("inference", CPU_AVX2)) == cpu
    assert names(build("inference", CPU_AVX2, fuse_blocks=False)) == [p for p in cpu if p != "fuse_blocks"]
    assert names(build("inference", resolve_target("cuda"))) == graph_passes
    # CUDA fuses only the blocks named (no cost model for fusion on a GPU)
    assert names(build("inference", resolve_target("cuda"), fuse_blocks={"blocks.1": True})) == [
        *graph_passes, "fuse_blocks"]
    with pytest.raises(ValueError, match="target torch runs no fused kernels"):  # named blocks are never ignored
        build("inference", fuse_blocks={"blocks.1": True})
    with pytest.raises(ValueError, match="the fuse_blocks pass is left out"):
        build("inference", CPU_AVX2, fuse_blocks={"blocks.1": True}, skip=["fuse_blocks"])
    assert names(build("train", CPU_AVX2)) == ["canonicalize", "tune_conv_bn", "eliminate_dead_code"]
    assert names(build("inference", CPU_AVX2, skip=["fuse_blocks", "select_lowering", "block_layout",
                                                    "fold_channel_scale"])) == graph_passes


def test_select_lowering_predicts_blocked_neighbours_only_when_block_layout_runs():
    def blocked_layouts(passes):
        return next(p for p in passes if p.name == "select_lowering").run.keywords["blocked_layouts"]

    assert blocked_layouts(build("inference", CPU_AVX2))
    assert not blocked_layouts(build("inference", CPU_AVX2, skip=["block_layout"]))
    assert not blocked_layouts(build("inference", CPU_AVX2, only=["select_lowering"]))


def test_build_validates_lowering_before_any_pass_runs():
    with pytest.raises(LoweringError, match="unknown lowering 'wino'"):
        build("inference", CPU_AVX2, lowering="wino")
    with pytest.raises(LoweringError, match="unknown lowering 'fast'"):
        build("inference", CPU_AVX2, lowering={"layer1": "fast"})
    with pytest.raises(ValueError, match="select_lowering pass is left out"):
        build("inference", CPU_AVX2, lowering="fft", skip=["select_lowering"])
    with pytest.raises(ValueError, match="runs no convopt conv kernels"):
        build("inference", None, lowering="fft")
    with pytest.raises(ValueError, match="mode must be one of"):
        build("eval")
