"""Attribute values in the IR text: Python-literal syntax, plus torch dtypes, devices and ``Ref(i)``.

``format_value`` and ``parse_value`` are exact inverses on the values attrs can hold: None, bools,
ints, floats (including inf and nan), strings, tuples (lists are stored as tuples), torch dtypes,
memory formats, layouts, devices and ``Ref``.
"""

from __future__ import annotations

import ast
import math
from typing import Any

import torch

from .ops import Ref

_TORCH_ENUMS = (torch.dtype, torch.memory_format, torch.layout)


def format_value(v: Any) -> str:
    if v is None or isinstance(v, (bool, str)):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (tuple, list)):
        inner = ", ".join(format_value(e) for e in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, Ref):
        return f"Ref({v.index})"
    if isinstance(v, _TORCH_ENUMS):
        return str(v) if str(v).startswith("torch.") else f"torch.{v}"
    if isinstance(v, torch.device):
        return f"device({str(v)!r})"
    raise TypeError(f"cannot write a value of type {type(v).__name__} in the IR: {v!r}")


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        value = getattr(torch, node.attr, None)
        if isinstance(value, _TORCH_ENUMS):
            return value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        arg = _eval(node.args[0])
        if node.func.id == "Ref" and isinstance(arg, int):
            return Ref(arg)
        if node.func.id == "device" and isinstance(arg, str):
            return torch.device(arg)
    raise ValueError(f"not an IR attribute value: {ast.unparse(node)!r}")


def parse_value(text: str) -> Any:
    return _eval(ast.parse(text.strip(), mode="eval").body)


def format_attrs(items: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in items)


def parse_attrs(text: str) -> dict[str, Any]:
    """Parse ``k=v, k=v`` (the inside of a node's braces) into a dict."""
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    if call.args:
        raise ValueError(f"attributes must be written key=value: {text!r}")
    return {kw.arg: _eval(kw.value) for kw in call.keywords}
