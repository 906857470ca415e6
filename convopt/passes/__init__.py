"""Graph passes: one per file, each a pure function ``name(graph) -> graph``."""

from .canonicalize import canonicalize
from .eliminate_dead_code import eliminate_dead_code
from .fold_constants import fold_constants
from .fold_conv_bn import fold_conv_bn
from .merge_branches import merge_branches
from .tune_conv_bn import tune_conv_bn

__all__ = ["canonicalize", "eliminate_dead_code", "fold_constants", "fold_conv_bn", "merge_branches", "tune_conv_bn"]
