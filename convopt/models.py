"""Model specs for the CLI and benchmarks: ``timm:NAME``, ``torchvision:NAME`` or ``path/to/file.py:factory``.

Models are built with random weights (no downloads): convopt's checks compare against the same model
in eager mode, so the weights' values do not matter, only that they are the same on both sides.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def load_model(spec: str) -> torch.nn.Module:
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ValueError(f"model spec {spec!r}: expected timm:NAME, torchvision:NAME or path/to/file.py:factory")
    if kind == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    if kind == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    path, _, factory = spec.rpartition(":")
    if not path.endswith(".py") or not Path(path).is_file():
        raise ValueError(f"model spec {spec!r}: {path!r} is not a Python file (or use timm:/torchvision:)")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if fn is None:
        raise ValueError(f"{path} has no {factory!r}")
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{path}:{factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(f"input shape {text!r}: expected comma-separated integers like 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input shape {text!r}: dimensions must be positive")
    return shape
