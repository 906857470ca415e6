"""Importing TVM's tensor intrinsics (``tvm.s_tir.tensor_intrin``) in seconds rather than minutes.

MetaSchedule's ``TuneContext`` imports ``tvm.s_tir.tensor_intrin`` on construction. That package writes about
250 TVMScript ``prim_func``s at import time, and each decoration calls ``inspect.stack()``, which asks
``inspect.getmodule`` for every frame on the stack. For a frame of the import machinery itself (file
``<frozen importlib._bootstrap>``) no module's ``__file__`` matches, so ``getmodule`` scans all of
``sys.modules`` again on every call, never caching a miss. With torch and timm loaded (~3900 modules) that
made the import take 80-120 s on a 2-core Zen 4.

Telling ``inspect`` which module those frozen files belong to (their real module: ``importlib._bootstrap`` is
what runs in them) turns each lookup into a dictionary hit: the same import then takes ~7 s with torch loaded.
Nothing else changes: ``inspect`` would compute the same mapping if frozen modules had a ``__file__``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

_FROZEN = ("importlib._bootstrap", "importlib._bootstrap_external")


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (once per process) with inspect's module lookup primed for the
    import machinery's frozen frames. Call before constructing a MetaSchedule ``TuneContext``."""
    for name in _FROZEN:
        if name in sys.modules:  # importlib imports both at start-up; guard for exotic interpreters
            frozen = f"<frozen {name}>"  # inspect looks up the frame's file name as given, then made absolute
            for key in (frozen, os.path.normcase(os.path.abspath(frozen))):
                inspect.modulesbyfile.setdefault(key, name)
    importlib.import_module("tvm.s_tir.tensor_intrin")  # a no-op once imported
