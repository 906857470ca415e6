"""Value types of the convopt IR: a tensor's static shape and dtype, or a tuple of them.

Dtypes are spelled with short names in the IR text (``f32``, ``i64``, ``bool``); the table
below is the single place that maps them to and from torch dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
    torch.complex64: "c64",
}
TORCH_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def full_dtype_name(name: str) -> str:
    """The full name of a short dtype name, as numpy and TVM spell it: "f32" -> "float32"."""
    return str(TORCH_DTYPES[name]).removeprefix("torch.")


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise TypeError(f"convopt IR has no name for dtype {dtype}") from None


@dataclass(frozen=True)
class TensorType:
    """A dense tensor of a static shape; ``dtype`` is a short name from DTYPE_NAMES.

    ``shape`` is always the logical (NCHW) shape. ``layout`` says how a backend stores it: "" is the
    contiguous row-major order of ``shape``; "NCHW16c" (ir/layout.py) a 4-D tensor stored in channel blocks
    of 16, as [N, C/16, H, W, 16]. The layout never changes what a value is, only where its elements live.
    """

    shape: tuple[int, ...]
    dtype: str = "f32"
    layout: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise TypeError(f"unknown dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.layout:
            from .layout import check_layout

            check_layout(self.shape, self.layout)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorType:
        return cls(tuple(tensor.shape), dtype_name(tensor.dtype))

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def logical(self) -> TensorType:
        """The same tensor in the default layout."""
        return TensorType(self.shape, self.dtype) if self.layout else self

    def __str__(self) -> str:
        text = f"{self.dtype}[{','.join(map(str, self.shape))}]"
        return f"{text}{{{self.layout}}}" if self.layout else text


@dataclass(frozen=True)
class TupleType:
    """The type of an op with several results (split, opaque multi-output ops); read with getitem."""

    elements: tuple[TensorType, ...]

    @property
    def logical(self) -> TupleType:
        """The same tuple with every part in the default layout."""
        return TupleType(tuple(e.logical for e in self.elements))

    def __str__(self) -> str:
        inner = ", ".join(map(str, self.elements))
        return f"({inner},)" if len(self.elements) == 1 else f"({inner})"


Type = TensorType | TupleType


def type_of(value: object) -> Type:
    """The IR type of a torch value (tensor, or tuple/list of tensors), e.g. a FakeTensor from capture."""
    if isinstance(value, torch.Tensor):
        return TensorType.of(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
        return TupleType(tuple(TensorType.of(v) for v in value))
    raise TypeError(f"no IR type for a value of Python type {type(value).__name__}")
