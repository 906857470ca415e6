"""The table of conv lowerings: name -> ``Lowering`` (the contract in conv_spec.py). The order is the order
of reports. Compiling one lowering of one conv on its own is ``convopt.schedules.kernel``.

``LOWERINGS`` are chosen between by the cost model (each has formulas and calibrated coefficients);
``RULE_LOWERINGS`` run every conv they support, by a rule of select_lowering (gemv: a one-pixel 1x1 conv).
"""

from __future__ import annotations

from . import depthwise, direct_conv2d, fft_conv, gemv, im2col, im2win, winograd
from .conv_spec import ConvSpec, Lowering

_TABLE: dict[str, Lowering] = {low.name: low for low in (
    direct_conv2d.LOWERING, im2col.LOWERING, im2win.LOWERING, winograd.WINOGRAD2, winograd.WINOGRAD4,
    fft_conv.LOWERING, depthwise.LOWERING, gemv.LOWERING)}
RULE_LOWERINGS = ("gemv",)
LOWERINGS = tuple(name for name in _TABLE if name not in RULE_LOWERINGS)
ALL_LOWERINGS = tuple(_TABLE)  # every name a user may force


class LoweringError(ValueError):
    pass


def lowering(name: str) -> Lowering:
    """The lowering called ``name``."""
    try:
        return _TABLE[name]
    except KeyError:
        raise LoweringError(f"unknown lowering {name!r}; convopt has: {', '.join(ALL_LOWERINGS)}") from None


def supported_lowerings(spec: ConvSpec) -> dict[str, str | None]:
    """name -> None if it runs ``spec``, else the reason it doesn't."""
    return {name: low.supports(spec) for name, low in _TABLE.items()}
