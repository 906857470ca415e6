"""The peers convopt is measured against, each prepared as a zero-argument callable on one input.

    eager        the model in PyTorch, eval mode, no_grad
    inductor     torch.compile (inductor) with freezing, no_grad
    ort          ONNX Runtime (CPU) on the model exported with torch.onnx (opset 17)
    ort-reparam  ONNX Runtime on timm's reparameterize_model(model): the strongest peer measured here
    convopt      convopt.optimize(model, x, target=...) (default: the TVM CPU target)
    convopt-torch  convopt.optimize(model, x, target="torch")

Every contender uses 2 threads. ``prepare`` returns (callable, output) so a caller can check outputs.
"""

from __future__ import annotations

import copy
import io
from typing import Callable

import torch

THREADS = 2


def _eager(model, x):
    return lambda: model(x)


def _inductor(model, x):
    import torch._inductor.config as config

    config.freezing = True
    compiled = torch.compile(model)
    return lambda: compiled(x)


def _onnx_session(model, x):
    import onnx
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    proto = onnx.load_from_string(buffer.getvalue())
    if proto.ir_version > 9:
        proto.ir_version = 9  # onnxruntime 1.31 refuses newer IR versions
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def _ort_reparam(model, x):
    from timm.utils.model import reparameterize_model

    return _onnx_session(reparameterize_model(copy.deepcopy(model)), x)


def _convopt(target: str):
    def prepare(model, x):
        import convopt

        fast = convopt.optimize(model, x, target=target)
        return lambda: fast(x)

    return prepare


CONTENDERS: dict[str, Callable] = {
    "eager": _eager,
    "inductor": _inductor,
    "ort": _onnx_session,
    "ort-reparam": _ort_reparam,
    "convopt": _convopt("cpu"),
    "convopt-torch": _convopt("torch"),
}


def prepare(name: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    if name not in CONTENDERS:
        raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
    torch.set_num_threads(THREADS)
    with torch.no_grad():
        fn = CONTENDERS[name](model.eval(), x)

    def run():
        with torch.no_grad():
            return fn()

    return run


__all__ = ["CONTENDERS", "prepare"]
