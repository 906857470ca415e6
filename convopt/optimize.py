"""``convopt.optimize``: capture, run the pass pipeline, build a backend, and check the result."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .backends.torch_backend import to_torch
from .capture import as_args, capture_program, modes_set
from .ir.graph import Graph, op_label
from .ir.printer import print_graph
from .ir.ops import Op
from .ir.types import TensorType
from .numerics import relative_error
from .pipeline import MODES, PassRecord, build, run_passes
from .target import Target, resolve_target

_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 2e-2}


class CheckError(AssertionError):
    pass


class OptimizedModule(nn.Module):
    """What ``optimize`` returns: call it like the original model; ``.graph`` is the final IR.

    Its parameters and buffers are the compiled graph's constants, under the original state_dict
    keys where passes kept a weight's name.
    """

    def __init__(self, graph: Graph, compiled: torch.fx.GraphModule, in_spec, out_spec, mode: str,
                 records: list[PassRecord], frozen_norms: Iterable[str] = ()):
        super().__init__()
        self.graph = graph
        self.mode = mode
        self.pass_records = records
        self.captured_op_counts: dict[str, int] = {}  # the graph's ops as captured, before the passes
        self._in_spec = in_spec
        self._out_spec = out_spec
        # forward's fast path: inputs passed as plain positional tensors of the captured shapes and dtypes skip
        # the pytree flatten and the TensorType checks (together ~6 us a call, against ~2 us of a small
        # model's whole VM call); anything else takes the checked path and its messages
        self._positional = in_spec == pytree.tree_flatten((tuple(range(len(graph.inputs))), {}))[1]
        self._input_types = tuple((torch.Size(v.type.shape), v.type.torch_dtype) for v in graph.inputs)
        self._has_dropout = any(n.op is Op.DROPOUT for n in graph.nodes)
        object.__setattr__(self, "_compiled", compiled)  # not a child: its state is shared below
        # One set of tensors: this module's parameters, buffers and submodules are the compiled graph's,
        # so state_dict(), parameters() and .to() see exactly what forward reads.
        self._parameters = compiled._parameters
        self._buffers = compiled._buffers
        self._modules = compiled._modules
        self.train(mode == "train")
        # The submodules that hold each captured BatchNorm's tensors mirror its frozen (eval) state, so
        # fast.train() flips them just as it would flip the model's BatchNorms; forward then refuses.
        self._frozen_norms = {}
        for scope in sorted({n.scope for n in graph.nodes if n.op is Op.BATCH_NORM and n.scope} | set(frozen_norms)):
            holder = self._modules_at(scope)
            if holder is not None:
                holder.training = False
                self._frozen_norms[scope] = holder

    def _modules_at(self, path: str) -> nn.Module | None:
        try:
            return self.get_submodule(path)
        except AttributeError:
            return None

    def _check_mode(self) -> None:
        unfrozen = [scope for scope, holder in self._frozen_norms.items() if holder.training]
        if unfrozen:
            raise RuntimeError(
                f"BatchNorm '{unfrozen[0]}' was captured in eval mode (running statistics) and is now in training "
                f"mode ({len(unfrozen)} such); convopt's graph cannot switch to batch statistics. Put the "
                "BatchNorm modules back in eval(), or optimize the model again in the mode you need.")
        if self.mode == "inference" and self.training:
            # BatchNorm and dropout were fixed to eval semantics (and folded away): train() would not undo it
            raise RuntimeError("this module was optimized with mode='inference' and computes eval-mode semantics; "
                               "call .eval(), or optimize() again with mode='train' to train it")
        if self.mode == "train" and not self.training and self._has_dropout:
            raise RuntimeError("this module was optimized with mode='train' and its dropout is fixed to training "
                               "behaviour; it is now in eval(). Call optimize() again with mode='inference' "
                               "for evaluation.")

    def signature(self) -> str:
        """The inputs this module takes, e.g. "(x: f32[1,3,224,224])"."""
        return "(" + ", ".join(f"{v.name}: {v.type}" for v in self.graph.inputs) + ")"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._check_mode()
        if (self._positional and not kwargs and len(args) == len(self._input_types)
                and all(isinstance(a, torch.Tensor) and a.shape == shape and a.dtype == dtype
                        for a, (shape, dtype) in zip(args, self._input_types))):
            flat = args
        else:
            flat = self._checked_inputs(args, kwargs)
        outputs = self._compiled.forward(*flat)  # not __call__: no hooks are set on it, and they cost a call ~1 us
        return pytree.tree_unflatten(list(outputs), self._out_spec)

    def _checked_inputs(self, args: tuple, kwargs: dict) -> list:
        """The flat input tensors of a call, or the error that says what is wrong with them."""
        if kwargs:
            raise TypeError(f"this module takes its inputs positionally, {self.signature()}; got keyword "
                            f"argument(s) {', '.join(sorted(kwargs))}")
        flat, spec = pytree.tree_flatten((args, {}))
        if spec != self._in_spec or len(flat) != len(self.graph.inputs):
            got = ", ".join(str(TensorType.of(a)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in flat)
            structure = "" if len(flat) != len(self.graph.inputs) else f" structured as {self._in_spec}"
            raise TypeError(f"expected {len(self.graph.inputs)} tensor(s) {self.signature()}{structure}; got "
                            f"{len(flat)}: ({got})")
        for value, tensor in zip(self.graph.inputs, flat):
            if not isinstance(tensor, torch.Tensor) or TensorType.of(tensor) != value.type:
                got = TensorType.of(tensor) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"input %{value.name}: expected {value.type}, got {got}; "
                                 "optimize() again with example inputs of the new shape")
        return flat

    @property
    def tuning(self) -> dict[str, dict]:
        """IR node -> how its kernel was scheduled, for every node computed by a kernel of convopt's that has
        a design space (convs, linear layers and fused blocks on a TVM CPU target, fused blocks on CUDA): {"kernel", "status":
        "tuned" | "default" | "untuned" | "stale", "default_us", "best_us", "speedup"} (tuning/apply.py).
        Empty for target "torch"."""
        from .tuning.apply import KernelTuning

        table = getattr(self._compiled, "kernels", None) or {}
        return {node: {"kernel": kernel, **row["tuning"], "speedup": KernelTuning(**row["tuning"]).speedup}
                for kernel, row in table.items() if "tuning" in row for node in row["nodes"]}

    @property
    def fallbacks(self) -> dict[str, str]:
        """IR node -> its ATen op, for every node that runs in PyTorch inside the compiled TVM module
        (no TVM lowering; see backends/torch_fallback.py). Empty for target "torch"."""
        nodes = {n.name: n for n in self.graph.nodes}
        groups = getattr(self._compiled, "fallbacks", None) or {}
        return {name: op_label(nodes[name]) for group in groups.values() for name in group}

    def placement(self) -> dict[str, str]:
        """IR node -> where it runs: "kernel NAME (lowering, tuning status)" for convopt's conv and dense
        kernels, "PyTorch fallback" for nodes TVM can't compile, "TVM" for Relax's generic ops, "PyTorch"
        everywhere for target "torch". The backend IR dump shows this above each node."""
        if self.target == "torch":
            return {n.name: "PyTorch" for n in self.graph.nodes}
        where = {n.name: "TVM" for n in self.graph.nodes}
        for kernel, row in (getattr(self._compiled, "kernels", None) or {}).items():
            tuning = row.get("tuning", {})
            status = tuning.get("status", "")
            if status == "tuned":
                speedup = self.tuning.get(row["nodes"][0], {}).get("speedup")
                status += f" {speedup:.2f}x" if speedup else ""
            detail = ", ".join(d for d in (row.get("lowering"), status) if d)
            for node in row["nodes"]:
                where[node] = f"kernel {kernel}" + (f" ({detail})" if detail else "")
        if where and getattr(self._compiled, "kernels", None):
            from .backends.conv_kernels import gated_weight_reader, plan_epilogues

            for conv, plan in plan_epilogues(self.graph).items():
                for node in plan.absorbed:
                    where[node] = f"kernel: epilogue of %{conv}"
            for n in self.graph.nodes:  # a conv weight's scaling by a squeeze-excite gate: in the block's kernel
                if n.op is Op.FUSED_BLOCK and (conv := gated_weight_reader(self.graph, n.name)) is not None:
                    where[self.graph.node_map[conv].inputs[1]] = f"kernel: epilogue of %{n.name}"
        for node in self.fallbacks:
            where[node] = "PyTorch fallback (no TVM lowering)"
        return where

    def summary(self) -> str:
        """A few lines: the target, the nodes and where they run, how convopt's kernels were scheduled, and
        the PyTorch fallbacks with their calls and share of the time over this module's calls so far."""
        from .tuning.apply import STATUSES

        where = self.placement()
        kinds = {"kernel": 0, "TVM": 0, "PyTorch fallback": 0, "PyTorch": 0}
        for text in where.values():
            kinds[next(k for k in kinds if text.startswith(k))] += 1
        lines = [f"target {self.target}, mode {self.mode}, {len(self.graph.nodes)} nodes: "
                 + ", ".join(f"{count} {label}" for label, count in
                             (("in convopt kernels", kinds["kernel"]), ("Relax ops", kinds["TVM"]),
                              ("PyTorch fallback", kinds["PyTorch fallback"]), ("PyTorch", kinds["PyTorch"]))
                             if count)]
        statuses = [row["status"] for row in self.tuning.values()]
        if statuses:
            lines.append("kernels: " + ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES if s in statuses))
        groups = getattr(self._compiled, "fallbacks", None) or {}
        if groups:
            times = self._compiled.time
            total = times["forward"][1]
            lines.append(f"PyTorch fallback (over {times['forward'][0]} calls):")
            fallbacks = self.fallbacks
            for name, nodes in groups.items():
                calls, seconds = times[name]
                share = f"{100 * seconds / total:.1f}% of the time" if total else "not run yet"
                lines.append(f"  {', '.join('%' + n for n in nodes)} ({fallbacks[nodes[0]]}): {calls} calls, {share}")
        return "\n".join(lines)

    @property
    def target(self) -> str:
        """Where it runs: "torch", or the key of the TVM target (convopt.target.Target.key)."""
        compiled_target = getattr(self._compiled, "target", None)
        return "torch" if compiled_target is None else compiled_target.key

    def save(self, path: str | os.PathLike) -> os.PathLike:
        """Write a deployable folder (compiled library, input signature, IR); ``convopt.load`` runs it."""
        from .backends.tvm_backend import TVMGraphModule, save_artifact

        if not isinstance(self._compiled, TVMGraphModule):
            raise TypeError("save() writes TVM artifacts (target 'cpu' / 'cuda'); for target='torch' save the "
                            "state_dict with torch.save and optimize the model again when loading")
        meta = {"mode": self.mode,
                "needs_torch_for": sorted(set(self.fallbacks.values())),
                "inputs": [{"name": v.name, "type": str(v.type)} for v in self.graph.inputs],
                "in_spec": pytree.treespec_dumps(self._in_spec), "out_spec": pytree.treespec_dumps(self._out_spec)}
        return save_artifact(path, self._compiled, self.graph, meta)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, nodes={len(self.graph.nodes)}, constants={len(self.graph.constants)}"


# A model whose own fp32 forward is far from its exact (float64) result (a deep random-init stack whose
# activations grow: efficientnetv2_rw_t at 224 px, 6.1e-4) can't be held to 1e-4 against eager fp32: there,
# the optimized module passes when it is within this factor of eager fp32's own error, both against float64.
FLOAT64_SLACK = 2.0


def _float64_outputs(model: nn.Module, args: tuple, mode: str | None) -> list | None:
    """The model's outputs computed in float64 (a copy of it, and of the inputs), as float32; None if the
    model can't run in float64."""
    import copy

    def widen(v):
        return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    try:
        wide = copy.deepcopy(model).double()
        with modes_set(wide, mode), torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            return [v.float() if v.is_floating_point() else v
                    for v in pytree.tree_leaves(wide(*pytree.tree_map(widen, args)))]
    except Exception:  # noqa: BLE001 - an op without a float64 kernel: no second opinion
        return None


def check_against_eager(model: nn.Module, result: OptimizedModule, example_inputs: Any) -> None:
    """Run both on ``example_inputs`` (same RNG seed) and raise CheckError if any output disagrees: a relative
    error above the tolerance, unless eager fp32 is itself that far from the model's float64 result and the
    optimized module is within ``FLOAT64_SLACK`` times eager's own error of it."""
    args = as_args(example_inputs)
    mode = "inference" if result.mode == "inference" else None
    with modes_set(model, mode), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        expected = pytree.tree_leaves(model(*args))
        torch.manual_seed(0)
        actual = pytree.tree_leaves(result(*args))
    exact = None
    for i, (a, b) in enumerate(zip(actual, expected)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckError(f"output {i}: optimized gives {TensorType.of(a)}, the model {TensorType.of(b)}")
        if not b.is_floating_point():
            if not torch.equal(a, b):
                raise CheckError(f"output {i}: integer outputs differ")
            continue
        err, tol = relative_error(a, b), _TOLERANCE.get(b.dtype, 1e-4)
        if not err <= tol and b.dtype == torch.float32:
            exact = _float64_outputs(model, args, mode) if exact is None else exact
            if exact is not None:
                ours, eager = relative_error(a, exact[i]), relative_error(b, exact[i])
                if ours <= FLOAT64_SLACK * eager:
                    continue
                tol_text = (f"; against float64 it is {ours:.3g}, eager fp32 {eager:.3g} (allowed: "
                            f"{FLOAT64_SLACK:g}x eager's)")
            else:
                tol_text = ""
            raise CheckError(
                f"output {i}: relative error {err:.3g} exceeds {tol:g} (max|a-b|/max|b| against eager{tol_text}). "
                "Find the pass at fault with optimize(..., skip_passes=[...]) or dump_ir=DIR; "
                "check=False returns the module anyway.")
        if not err <= tol:
            raise CheckError(
                f"output {i}: relative error {err:.3g} exceeds {tol:g} (max|a-b|/max|b| against eager). "
                "Find the pass at fault with optimize(..., skip_passes=[...]) or dump_ir=DIR; "
                "check=False returns the module anyway.")


def _on_cuda(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


def _warn_fallbacks(graph: Graph, fallbacks: dict[str, list[str]]) -> None:
    nodes = {n.name: n for n in graph.nodes}
    names = [name for group in fallbacks.values() for name in group]
    listed = ", ".join(f"%{name} ({op_label(nodes[name])})" for name in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    warnings.warn(f"{len(names)} node(s) have no TVM lowering and run in PyTorch inside the TVM module: "
                  f"{listed}{more}. The rest of the graph runs on TVM; strict=True refuses such models.",
                  stacklevel=3)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _measured_lowerings(target, tuning_logs) -> dict | None:
    """The lowerings' measured times from the tuning records of a TVM CPU target (None: none to read)."""
    if tuning_logs is False or not (isinstance(target, Target) and target.is_cpu):
        return None
    from .tuning.apply import TunedSchedules, default_log_dirs
    from .tuning.lowering_times import measured_lowerings

    folders = tuning_logs.log_dirs if isinstance(tuning_logs, TunedSchedules) else default_log_dirs(tuning_logs)
    return measured_lowerings(target, folders)


def optimize(model: nn.Module, example_inputs: Any, *, target: str | dict | None = None, mode: str = "inference",
             dump_ir: str | os.PathLike | None = None, passes: Iterable[str] | None = None,
             skip_passes: Iterable[str] = (), check: bool = True, verify: bool | None = None,
             lowering: str | dict[str, str] | None = None, tuning_logs=None, strict: bool = False,
             fuse_blocks: bool | dict[str, bool] = True) -> OptimizedModule:
    """Optimize ``model`` for inputs like ``example_inputs``; returns a drop-in callable module.

    target: "cpu" / "cuda" (or a TVM target dict, a tvm.target.Target or a convopt Target) compile the
    graph with TVM (inference only); a node with no TVM lowering runs its ATen op in PyTorch inside the
    compiled module (with a warning naming it; ``strict=True`` refuses instead); "torch" runs the whole
    graph with PyTorch kernels. The default (None) is "cpu", or "cuda" for a model on a GPU, and "torch"
    for mode="train". mode: "inference" (eval-mode semantics,
    frozen weights) or "train" (constants stay trainable parameters). dump_ir: a folder for the IR after
    capture and after each pass that changed it. passes / skip_passes: select or leave out passes by
    name (also CONVOPT_SKIP_PASSES=a,b). check: compare against the eager model on ``example_inputs``
    (relative error, 1e-4 for fp32; where eager fp32 is itself further than that from a float64 run of the
    model, within ``FLOAT64_SLACK`` times eager's own error of that run) and raise CheckError if they disagree
    (where the cost model chose Winograd for some conv, first build again without it and warn if that
    agrees: fp32 rounding, docs/lowerings.md).
    verify: verify the IR between passes (default: the CONVOPT_VERIFY environment variable). lowering: on a TVM CPU target the cost
    model picks each conv's algorithm (pass select_lowering); a lowering name ("direct", "im2col",
    "im2win", "winograd2", "winograd4", "fft", "depthwise") forces it wherever it applies, and a dict {layer: lowering}
    forces it per layer (keys: module names such as "layer1.0.conv1", or IR node names). tuning_logs: on a
    TVM CPU target each kernel runs the fastest schedule its tuning records hold for this machine (written by
    ``convopt tune``), read from the shipped tuning_logs/, $CONVOPT_TUNING_LOGS, ./tuning_logs and this
    folder (or list of folders), or from a ``tuning.apply.TunedSchedules`` already read; False runs every
    kernel's default schedule. ``.tuning`` says per conv which
    ran tuned code. strict: on a TVM target, refuse (UnsupportedOpError naming the node) a graph with an
    op TVM can't compile instead of running that op in PyTorch. fuse_blocks: on a TVM CPU target, inverted
    residual blocks run as one kernel where the cost model predicts it faster (pass fuse_blocks); False
    never, a dict {module or node name: bool} forces it per block (e.g. {"blocks.1.0": True}).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, not {mode!r}")
    defaulted = target is None
    if defaulted:
        target = "torch" if mode == "train" else "cuda" if _on_cuda(model) else "cpu"
    if target != "torch":
        target = resolve_target(target)
        if mode != "inference":
            raise ValueError(f"target={target} compiles inference graphs; train with target='torch'")
    skip = set(skip_passes) | {s for s in os.environ.get("CONVOPT_SKIP_PASSES", "").split(",") if s}
    measured = _measured_lowerings(target, tuning_logs)

    def pipeline_for(avoid: tuple[str, ...] = ()):
        return build(mode, target, lowering=lowering, only=passes, skip=skip, measured=measured,
                     fuse_blocks=fuse_blocks, avoid_lowerings=avoid)

    pipeline = pipeline_for()
    if mode == "inference" and any(m.training for m in model.modules()):
        warnings.warn("the model is in training mode; optimize(mode='inference') computes eval-mode semantics "
                      "(BatchNorm running statistics, dropout off). Call model.eval() first to say so, or "
                      "optimize with mode='train'.", stacklevel=2)
    captured = capture_program(model, example_inputs, mode=mode)
    if target != "torch":
        empty = [v for v in captured.graph.inputs if 0 in v.type.shape]
        if empty:
            raise ValueError(f"input %{empty[0].name} is {empty[0].type}: a TVM target compiles for the example's "
                             "shape, and a zero-size dimension leaves nothing to compute. Optimize with a "
                             "non-empty example (e.g. batch 1), or use target='torch'")
    verify = _env_flag("CONVOPT_VERIFY") if verify is None else verify

    def compile_with(pipeline) -> OptimizedModule:
        graph, records = run_passes(captured.graph, pipeline, dump_dir=dump_ir, verify=verify)
        if target == "torch":
            compiled = to_torch(graph, trainable=(mode == "train"))
        else:
            from .backends.tvm_backend import TVMGraphModule, compile_graph

            from .tuning.apply import TunedSchedules

            if isinstance(tuning_logs, TunedSchedules) and tuning_logs.target.key != target.key:
                raise ValueError(f"tuning_logs holds the records of {tuning_logs.target.key}, not of the target "
                                 f"{target.key}")
            tuned = (None if tuning_logs is False else tuning_logs if isinstance(tuning_logs, TunedSchedules)
                     else TunedSchedules.for_target(target, tuning_logs))
            executable, kernels, fallbacks = compile_graph(graph, target, tuned, fallback=not strict)
            compiled = TVMGraphModule(executable, target, kernels, fallbacks)
            if fallbacks:
                _warn_fallbacks(graph, fallbacks)
        frozen_norms = {n.scope for n in captured.graph.nodes if n.op is Op.BATCH_NORM and n.scope}
        result = OptimizedModule(graph, compiled, captured.in_spec, captured.out_spec, mode, records, frozen_norms)
        result.captured_op_counts = captured.graph.op_counts()
        if dump_ir is not None:  # where each node runs, after the backend
            (Path(dump_ir) / f"{len(records) + 1:03d}_backend.ir").write_text(print_graph(graph, result.placement()))
        return result

    result = compile_with(pipeline)
    if check:
        try:
            check_against_eager(model, result, example_inputs)
        except CheckError as error:
            winograd = [n.name for n in result.graph.nodes
                        if n.op is Op.CONV2D and getattr(n.attrs, "lowering", "") in WINOGRAD_LOWERINGS]
            if not winograd or _forces(lowering, WINOGRAD_LOWERINGS):
                raise
            # Winograd's transforms round in fp32 at each of their terms: through a deep stack of convs of a
            # model whose activations grow (random weights) that alone can exceed the tolerance, every pass
            # being right. The cost model chose Winograd for speed; the check has the last word.
            result = compile_with(pipeline_for(WINOGRAD_LOWERINGS))
            try:
                check_against_eager(model, result, example_inputs)
            except CheckError as again:
                raise CheckError(f"{again} (also with Winograd avoided; with it: {error})") from None
            warnings.warn(f"{error.args[0].split(' (max')[0]} with Winograd convolutions ({len(winograd)} convs: "
                          "their fp32 transforms round), within tolerance without: those convs use other "
                          "lowerings. optimize(..., check=False) keeps Winograd.", stacklevel=2)
    return result


# Winograd's lowerings: optimize() rebuilds without them when its check fails with them (fp32 rounding)
WINOGRAD_LOWERINGS = ("winograd2", "winograd4")


def _forces(lowering, names) -> bool:
    """Whether the user's ``lowering=`` argument forces one of ``names`` on some conv."""
    if isinstance(lowering, str):
        return lowering in names
    return isinstance(lowering, dict) and any(v in names for v in lowering.values())


def load(path) -> OptimizedModule:
    """Load a folder written by ``OptimizedModule.save``; needs neither the model's code nor its weights."""
    from .backends.tvm_backend import load_artifact
    from .ir.parser import parse

    compiled, meta, ir_text = load_artifact(path)
    try:
        graph = parse(ir_text)
    except ValueError as e:
        from .backends.tvm_backend import ArtifactError

        raise ArtifactError(f"{path}: graph.ir does not parse ({e}); save the model again") from None
    return OptimizedModule(graph, compiled, pytree.treespec_loads(meta["in_spec"]),
                           pytree.treespec_loads(meta["out_spec"]), meta["mode"], [])
