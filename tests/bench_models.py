"""Tiny models for tests/test_bench.py, loaded by spec (``tests/bench_models.py:tiny_net``) in worker processes."""

from __future__ import annotations

import os

import torch
from torch import nn


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


class NotExportable(nn.Module):
    """Runs in eager mode, refuses to be exported to ONNX: a peer (ort, openvino) that fails on a model."""

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            raise RuntimeError("this model cannot be exported")
        return x.relu()


def not_exportable_net() -> nn.Module:
    return NotExportable()


def crashing_net() -> nn.Module:
    """Kills the worker process while the model is built, as a segfault in a runtime would."""
    os._exit(3)
