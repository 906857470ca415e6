"""The convopt IR: Graph, Node, Op, TensorType; printer, parser, verifier and graph views."""

from .graph import Constant, Graph, GraphEditor, Node, Origin, Value, checksum
from .ops import OPS, Op, Ref
from .parser import ParseError, parse
from .printer import print_graph
from .types import TensorType, TupleType
from .verify import VerifyError, verify
from .views import to_dot, to_networkx

__all__ = [
    "Constant", "Graph", "GraphEditor", "Node", "Origin", "Value", "checksum", "OPS", "Op", "Ref",
    "ParseError", "parse", "print_graph", "TensorType", "TupleType", "VerifyError", "verify",
    "to_dot", "to_networkx",
]
