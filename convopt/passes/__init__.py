"""Graph passes: one per file, each a pure function ``name(graph) -> graph``."""

from .canonicalize import canonicalize
from .eliminate_dead_code import eliminate_dead_code

__all__ = ["canonicalize", "eliminate_dead_code"]
