"""tuning/intrinsics.py: TVM's tensor intrinsics imported with inspect's module lookup primed for the frames of
the import machinery, which then map to their real module."""

import importlib
import inspect
import sys


def test_the_intrinsics_are_registered_and_import_frames_map_to_importlib():
    from tvm.s_tir import TensorIntrin

    from convopt.tuning.intrinsics import import_tensor_intrinsics

    import_tensor_intrinsics()
    import_tensor_intrinsics()  # again: a no-op
    assert TensorIntrin.get("wmma_sync_16x16x16_f16f16f32") is not None  # what MetaSchedule's CUDA rules use
    seen = []

    class Probe:  # consulted by the import machinery: the frames just above it are importlib's frozen ones
        def find_spec(self, name, path=None, target=None):
            if name == "convopt_probe_module":
                seen.extend(inspect.getmodule(f.frame) for f in inspect.stack(context=0)[1:4])
            return None

    sys.meta_path.insert(0, Probe())
    try:
        importlib.import_module("convopt_probe_module")
    except ModuleNotFoundError:
        pass
    finally:
        sys.meta_path.pop(0)
    assert seen and all(m is not None and m.__name__.startswith("importlib._bootstrap") for m in seen)
    assert inspect.getmodule(test_the_intrinsics_are_registered_and_import_frames_map_to_importlib).__name__ == __name__
