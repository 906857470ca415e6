"""A RepLKNet / UniRepLKNet-style network of large-kernel depthwise blocks, for tests and benchmarks.

Each block: BN -> 1x1 conv -> ReLU -> depthwise KxK conv with a parallel small-kernel depthwise branch
(both with BN; merge_branches reparameterizes the pair into one KxK conv) -> ReLU -> 1x1 conv, plus
the residual. Stage 1 uses 31x31 kernels on 56x56 maps, stage 2 13x13 on 28x28, as in the papers.

    convopt optimize tests/large_kernel_block.py:large_kernel_net --shape 1,64,56,56
"""

from __future__ import annotations

from torch import nn


class LargeKernelBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, small_kernel: int = 5):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.expand = nn.Conv2d(channels, channels, 1)
        self.large = nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels,
                                             bias=False), nn.BatchNorm2d(channels))
        self.small = nn.Sequential(nn.Conv2d(channels, channels, small_kernel, padding=small_kernel // 2,
                                             groups=channels, bias=False), nn.BatchNorm2d(channels))
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        y = self.expand(self.norm(x)).relu()
        y = (self.large(y) + self.small(y)).relu()
        return x + self.project(y)


def large_kernel_net(channels: int = 64) -> nn.Module:
    """Input [N, channels, 56, 56]: a 31x31 block at 56x56, a 3x3 stride-2 transition, a 13x13 block at 28x28."""
    return nn.Sequential(
        LargeKernelBlock(channels, 31),
        nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.BatchNorm2d(2 * channels),
                      nn.ReLU()),
        LargeKernelBlock(2 * channels, 13),
    ).eval()
