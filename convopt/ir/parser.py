"""Read an IR dump back into a Graph: ``str(parse(str(g))) == str(g)``.

A dump has checksums, not values, so parsed constants carry no data unless ``constants`` (a mapping
from name to tensor, e.g. the original graph's or a state_dict) is given; a given tensor must match
the checksum in the text.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Mapping

import torch

from .graph import Constant, Graph, Node, Origin, Value, checksum
from .literals import parse_attrs
from .ops import OPS, Op
from .types import TensorType, TupleType, Type

_NAME = r"[^\s,(){}:%@]+"
_TENSOR_TYPE = re.compile(r"(\w+)\[([\d,]*)\](?:\{(\w+)\})?")
_HEADER = re.compile(rf"graph ({_NAME})\((.*)\) \{{$")
_CONSTANT = re.compile(rf"(param|const) %({_NAME}): (\S+) #([0-9a-f]+)$")
_NODE = re.compile(
    rf"%(?P<name>{_NAME}) = (?P<op>\w+)\((?P<inputs>[^)]*)\)(?: \{{(?P<attrs>.*)\}})? : (?P<type>.+?)"
    rf"(?: @(?P<scope>\S+))?(?: <- (?P<pass>\w+)\((?P<sources>[^)]*)\))?$"
)


class ParseError(ValueError):
    pass


def _tensor_type(text: str) -> TensorType:
    m = _TENSOR_TYPE.fullmatch(text.strip())
    if not m:
        raise ParseError(f"not a tensor type: {text!r}")
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    return TensorType(dims, m.group(1), m.group(3) or "")


def _type(text: str) -> Type:
    text = text.strip()
    if text.startswith("("):
        parts = [p for p in re.findall(r"\w+\[[\d,]*\](?:\{\w+\})?", text)]
        return TupleType(tuple(_tensor_type(p) for p in parts))
    return _tensor_type(text)


def _names(text: str) -> list[str | None]:
    out: list[str | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "none":
            out.append(None)
        elif part.startswith("%"):
            out.append(part[1:])
        else:
            raise ParseError(f"expected %name or none, got {part!r}")
    return out


def parse(text: str, constants: Mapping[str, torch.Tensor] | None = None) -> Graph:
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines or not (header := _HEADER.match(lines[0])):
        raise ParseError("an IR dump starts with 'graph NAME(%input: type, ...) {'")
    if lines[-1] != "}":
        raise ParseError("an IR dump ends with '}'")
    inputs = []
    if header.group(2).strip():
        for part in re.split(r",\s*(?=%)", header.group(2)):
            name, _, ty = part.partition(": ")
            inputs.append(Value(name.strip().lstrip("%"), _tensor_type(ty)))
    consts: list[Constant] = []
    nodes: list[Node] = []
    outputs: tuple[str, ...] | None = None
    for lineno, line in enumerate(lines[1:-1], start=2):
        try:
            if outputs is not None:
                raise ParseError("nothing may follow 'return'")
            if m := _CONSTANT.match(line):
                kind, name, ty, digest = m.groups()
                consts.append(_constant(name, _tensor_type(ty), digest, kind == "param", constants))
            elif line.startswith("|"):
                if not nodes or nodes[-1].op is not Op.FUSED_BLOCK:
                    raise ParseError("a '|' body line follows a fused_block node")
                m = _NODE.match(line[1:].strip())
                if m is None:
                    raise ParseError("not a node")
                block = nodes[-1]
                nodes[-1] = replace(block, attrs=replace(block.attrs, body=(*block.attrs.body, _node(m))))
            elif line.startswith("return"):
                outputs = tuple(n for n in _names(line[len("return"):]) if n is not None)
            elif m := _NODE.match(line):
                nodes.append(_node(m))
            else:
                raise ParseError("not a constant, node or return line")
        except (ParseError, ValueError, TypeError, KeyError, SyntaxError) as e:
            raise ParseError(f"line {lineno}: {e}\n  {line}") from e
    if outputs is None:
        raise ParseError("missing 'return' line")
    return Graph(tuple(inputs), tuple(consts), tuple(nodes), outputs, name=header.group(1))


def _constant(name, ty, digest, is_param, values) -> Constant:
    data = None
    if values is not None and name in values:
        data = values[name].detach()
        if checksum(data) != digest:
            raise ParseError(f"tensor given for %{name} does not match checksum #{digest}")
    return Constant(name, ty, digest, is_param, data)


def _node(m: re.Match) -> Node:
    try:
        op = Op(m.group("op"))
    except ValueError:
        raise ParseError(f"unknown op {m.group('op')!r}") from None
    attrs = OPS[op].attrs(**parse_attrs(m.group("attrs") or ""))
    origin = None
    if m.group("pass"):
        origin = Origin(m.group("pass"), tuple(n for n in _names(m.group("sources")) if n))
    return Node(m.group("name"), op, tuple(_names(m.group("inputs"))), attrs, _type(m.group("type")),
                m.group("scope") or "", origin)
