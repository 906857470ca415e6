"""The peers convopt is measured against, each prepared as a zero-argument callable on one input.

    eager             the model in PyTorch, eval mode, no_grad
    inductor          torch.compile (inductor) with freezing, no_grad
    ort               ONNX Runtime (CPU) on the model exported with torch.onnx (opset 17)
    ort-reparam       ONNX Runtime on timm's reparameterize_model(model)
    openvino          OpenVINO (CPU, f32, latency hint) on the same ONNX export as ``ort``
    openvino-reparam  OpenVINO on timm's reparameterize_model(model)
    convopt           convopt.optimize(model, x, target="cpu") (TVM; with the tuning records it finds)
    convopt-untuned   the same with every kernel's default schedule (tuning_logs=False)
    convopt-nchw      the same without the blocked activation layout (skip_passes=["block_layout"])
    convopt-unfused   the same without block fusion (skip_passes=["fuse_blocks"])
    convopt-unfused-untuned  without block fusion and without tuning records (fusion's end-to-end table)
    convopt-torch     convopt.optimize(model, x, target="torch")

Every contender uses ``THREADS`` threads. ONNX Runtime and OpenVINO read one shared export
(``onnx_bytes``) so their numbers differ by runtime only, never by how the graph was exported. The
``-reparam`` variants exist because timm's reparameterization (RepVGG / MobileOne branch merging) is
what a user of those runtimes would do by hand; convopt does the same merging itself.
"""

from __future__ import annotations

import copy
import io
from typing import Callable

import torch

THREADS = 2
OPENVINO_CONFIG = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                   # without it OpenVINO may run bf16 on AMX machines: compare f32 with f32
                   "INFERENCE_PRECISION_HINT": "f32"}


def onnx_bytes(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """The model as ONNX (TorchScript exporter, opset 17, one input named ``x``), readable by ORT 1.31."""
    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    proto = onnx.load_from_string(buffer.getvalue())
    if proto.ir_version > 9:
        proto.ir_version = 9  # onnxruntime 1.31 refuses newer IR versions
    return proto.SerializeToString()


def _eager(model, x):
    return lambda: model(x)


def _inductor(model, x):
    import torch._inductor.config as config

    config.freezing = True
    compiled = torch.compile(model)
    return lambda: compiled(x)


def _onnx_runtime(model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes(model, x), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def _openvino(model, x):
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(onnx_bytes(model, x)), "CPU", OPENVINO_CONFIG)
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    return lambda: torch.from_numpy(request.infer(feed, share_inputs=True)[0])


def _on_reparameterized(prepare: Callable) -> Callable:
    """``prepare`` applied to timm's reparameterize_model of a copy of the model."""

    def prepare_reparameterized(model, x):
        from timm.utils.model import reparameterize_model

        return prepare(reparameterize_model(copy.deepcopy(model)), x)

    return prepare_reparameterized


def _convopt(target: str, skip_passes: tuple[str, ...] = (), tuning_logs=None):
    def prepare(model, x):
        import convopt

        fast = convopt.optimize(model, x, target=target, skip_passes=skip_passes, tuning_logs=tuning_logs)
        return lambda: fast(x)

    return prepare


CONTENDERS: dict[str, Callable] = {
    "eager": _eager,
    "inductor": _inductor,
    "ort": _onnx_runtime,
    "ort-reparam": _on_reparameterized(_onnx_runtime),
    "openvino": _openvino,
    "openvino-reparam": _on_reparameterized(_openvino),
    "convopt": _convopt("cpu"),
    "convopt-nchw": _convopt("cpu", ("block_layout",)),
    "convopt-untuned": _convopt("cpu", tuning_logs=False),
    "convopt-unfused": _convopt("cpu", ("fuse_blocks",)),
    "convopt-unfused-untuned": _convopt("cpu", ("fuse_blocks",), tuning_logs=False),
    "convopt-torch": _convopt("torch"),
}


def check_names(names: list[str]) -> None:
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(map(repr, unknown))}; known: {', '.join(CONTENDERS)}")


def prepare(name: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    check_names([name])
    torch.set_num_threads(THREADS)
    with torch.no_grad():
        fn = CONTENDERS[name](model.eval(), x)

    def run():
        with torch.no_grad():
            return fn()

    return run


__all__ = ["CONTENDERS", "THREADS", "check_names", "onnx_bytes", "prepare"]
