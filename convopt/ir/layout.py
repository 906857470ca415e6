"""Activation layouts: how a backend stores a 4-D NCHW tensor (``TensorType.layout``).

    ""        the row-major order of the logical shape [N, C, H, W]
    "NCHWbc"  channel blocks of b (b = the SIMD width of the CPU target): stored as [N, ceil(C/b), H, W, b],
              element (n, c, y, x) at [n, c // b, y, x, c % b]. When C is not a multiple of b the last block
              is padded: its lanes past C ("pad lanes") hold zeros, and every op that writes such a tensor
              keeps them zero (passes/block_layout.py admits only ops that map zeros to zeros), so a kernel
              may read it as a tensor of ceil(C/b) * b channels whose extra channels are 0 (ORT's NCHWc
              pads the same way: 40 channels are 3 blocks of 16 with AVX-512)

The blocked layout lets a conv kernel that vectorizes over output channels store whole vectors, and the
next conv read each pixel's channels contiguously (ORT's NCHWc and oneDNN's nChw16c are the same idea).
A tensor with H = W = 1 is stored identically in both layouts. The pass that chooses layouts is
passes/block_layout.py; the helpers here are shared by it and the TVM backend.
"""

from __future__ import annotations

import re

import numpy as np

_BLOCKED = re.compile(r"NCHW(\d+)c")


def blocked_layout(block: int) -> str:
    return f"NCHW{block}c"


def block_of(layout: str) -> int | None:
    """b of "NCHWbc"; None for the default layout."""
    if not layout:
        return None
    m = _BLOCKED.fullmatch(layout)
    if m is None:
        raise ValueError(f"unknown layout {layout!r}; convopt knows '' (row-major) and NCHW<b>c")
    return int(m.group(1))


def padded_channels(channels: int, block: int) -> int:
    """The channels a blocked tensor stores: ``channels`` rounded up to whole blocks."""
    return -(-channels // block) * block


def check_layout(shape: tuple[int, ...], layout: str) -> None:
    block = block_of(layout)
    if block is None:
        return
    if len(shape) != 4 or block <= 0:
        raise ValueError(f"layout {layout} stores 4-D tensors, not shape {list(shape)}")


def stored_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The shape of the buffer that holds a tensor of logical ``shape`` in ``layout``."""
    block = block_of(layout)
    if block is None:
        return tuple(shape)
    n, c, h, w = shape
    return (n, -(-c // block), h, w, block)


def aligned_4d(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """``shape`` as it broadcasts against a 4-D tensor (ones prepended); None above rank 4."""
    return None if len(shape) > 4 else (1,) * (4 - len(shape)) + tuple(shape)


def to_blocked(array: np.ndarray, block: int) -> np.ndarray:
    """A 4-D NCHW array (any of its dims may be 1 for broadcasting, except C) stored as [N, ceil(C/b), H, W, b],
    the pad lanes zero."""
    n, c, h, w = array.shape
    padded = padded_channels(c, block)
    if padded != c:
        array = np.concatenate([array, np.zeros((n, padded - c, h, w), array.dtype)], axis=1)
    return np.ascontiguousarray(array.reshape(n, padded // block, block, h, w).transpose(0, 1, 3, 4, 2))
