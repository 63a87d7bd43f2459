"""ResNet blocks and DeepLab-v3's ASPP as torch modules, with torchvision's attribute names.

The names are part of the contract: a block registered as `layer3.2` in a stage holds
`conv2.weight` where torchvision's ResNet holds `layer3.2.conv2.weight`, so an ImageNet
checkpoint loads by name (mtlc.compiler.weights). Convolutions inside have no bias and
are initialised as torchvision does (Kaiming normal, fan-out, ReLU gain; BN weight 1,
bias 0), so an untrained mtlc ResNet starts where torchvision's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """torchvision's shortcut projection: 1×1 conv with the block's stride, then BN."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def init_like_torchvision(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, BN weight 1 and bias 0 (torchvision's ResNet)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """ResNet-18/34's block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    torchvision refuses dilation here; mtlc follows timm: the first 3×3 conv uses
    `first_dilation` (the previous stage's dilation in the first block of a dilated
    stage), the second one `dilation`.
    """

    def __init__(
        self, cin: int, cout: int, stride: int = 1, dilation: int = 1, first_dilation: int = 0
    ):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout, 1, dilation)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)
        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101's block (torchvision's "ResNet V1.5"): the stride sits on the 3×3 conv.

    1×1 to `planes`, 3×3 (stride, dilation, padding = dilation), 1×1 to `4·planes`, each
    followed by BN; a ReLU after the first two and after adding the shortcut.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, out, stride)
        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if k == 3 else 0
    return [
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class ASPPPooling(nn.Sequential):
    """Image pooling branch: global average, 1×1 conv–BN–ReLU, resized back (bilinear)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLab-v3's atrous spatial pyramid pooling (Chen et al. 2017), as torchvision's.

    Branches `convs.0` (1×1), `convs.1..R` (3×3 at each rate, padding = rate) and
    `convs.R+1` (image pooling), each `out` channels with BN and ReLU, no conv bias;
    concatenated and projected by `project` (1×1 conv, BN, ReLU, dropout).
    """

    def __init__(
        self, cin: int, out: int = 256, rates: tuple[int, ...] = (12, 24, 36), p: float = 0.5
    ):
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(cin, out, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(cin, out, 3, r)) for r in rates]
        branches.append(ASPPPooling(cin, out))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * out, out, 1), nn.Dropout(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
