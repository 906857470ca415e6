"""The table of conv lowerings: name -> ``Lowering`` (the contract in conv_spec.py). The order is the order
of reports. Compiling one lowering of one conv on its own is ``convopt.schedules.kernel``."""

from __future__ import annotations

from . import depthwise, direct_conv2d, fft_conv, im2col, im2win, winograd
from .conv_spec import ConvSpec, Lowering

_TABLE: dict[str, Lowering] = {low.name: low for low in (
    direct_conv2d.LOWERING, im2col.LOWERING, im2win.LOWERING, winograd.WINOGRAD2, winograd.WINOGRAD4,
    fft_conv.LOWERING, depthwise.LOWERING)}
LOWERINGS = tuple(_TABLE)


class LoweringError(ValueError):
    pass


def lowering(name: str) -> Lowering:
    """The lowering called ``name``."""
    try:
        return _TABLE[name]
    except KeyError:
        raise LoweringError(f"unknown lowering {name!r}; convopt has: {', '.join(LOWERINGS)}") from None


def supported_lowerings(spec: ConvSpec) -> dict[str, str | None]:
    """name -> None if it runs ``spec``, else the reason it doesn't."""
    return {name: low.supports(spec) for name, low in _TABLE.items()}
