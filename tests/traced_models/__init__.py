"""Small models for the `import:` backbone tests, imported with `--allow-import traced_models`."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class Tiny(nn.Module):
    """A stem, a residual block, a strided conv scaled by a parameter, a block, a classifier."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = Block(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.scale = nn.Parameter(torch.full((1, 2 * width, 1, 1), 1.5))
        self.block2 = Block(2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def features(self, x):
        x = self.block1(self.stem(x))
        return self.block2(torch.relu(self.down(x)) * self.scale)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Skip(Tiny):
    """The stem's output is added again at the end: a skip over every cut."""

    def forward(self, x):
        s = self.stem(x)
        y = self.block2(torch.relu(self.down(self.block1(s))) * self.scale)
        return y + nn.functional.avg_pool2d(s, 2).repeat(1, 2, 1, 1)


class Dynamic(Tiny):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x):
        if x.sum() > 0:
            return self.stem(x)
        return self.block1(self.stem(x))


def tiny(width: int = 8) -> nn.Module:
    return Tiny(width)


def skip() -> nn.Module:
    return Skip()


def dynamic() -> nn.Module:
    return Dynamic()


def broken() -> nn.Module:
    raise RuntimeError("no such checkpoint on this machine")
