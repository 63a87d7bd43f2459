"""A hand-written torchvision-style ResNet and DeepLab head, independent of mtlc's code.

It follows torchvision's `resnet.py` and `segmentation/deeplabv3.py` line for line in
structure and attribute names (torchvision itself cannot be imported here), so that its
`state_dict()` is a checkpoint in torchvision's key layout: the tests load it into mtlc
and compare outputs, and benchmarks/bench_backbone_step.py times mtlc against it.
The basic block takes a dilation the way timm does (torchvision refuses one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class RefBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, first_dilation=1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, first_dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


CONFIGS = {
    "resnet18": (RefBasicBlock, [2, 2, 2, 2]),
    "resnet34": (RefBasicBlock, [3, 4, 6, 3]),
    "resnet50": (RefBottleneck, [3, 4, 6, 3]),
    "resnet101": (RefBottleneck, [3, 4, 23, 3]),
}


class RefResNet(nn.Module):
    """torchvision's ResNet; `forward` returns layer4's features (no avgpool/fc applied)."""

    def __init__(self, name, replace_stride_with_dilation=(False, False, False), classes=1000):
        super().__init__()
        block, layers = CONFIGS[name]
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.fc = nn.Linear(512 * block.expansion, classes)  # in the checkpoint, unused here

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        if block is RefBottleneck:
            first = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
        else:
            first = [
                block(self.inplanes, planes, stride, downsample, self.dilation, previous_dilation)
            ]
        self.inplanes = planes * block.expansion
        rest = [
            block(self.inplanes, planes, dilation=self.dilation, first_dilation=self.dilation)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*first, *rest)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class RefASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class RefASPP(nn.Module):
    def __init__(self, cin, rates=(12, 24, 36), cout=256):
        super().__init__()
        mods = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        for r in rates:
            mods.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                )
            )
        mods.append(RefASPPPooling(cin, cout))
        self.convs = nn.ModuleList(mods)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


def deeplab_head(cin, classes):
    """torchvision's DeepLabHead: ASPP, 3×3 conv 256 (no bias), BN, ReLU, 1×1 conv to classes."""
    return nn.Sequential(
        RefASPP(cin, [12, 24, 36]),
        nn.Conv2d(256, 256, 3, padding=1, bias=False),
        nn.BatchNorm2d(256),
        nn.ReLU(),
        nn.Conv2d(256, classes, 1),
    )


class RefMultiTask(nn.Module):
    """LibMTL's NYUv2 HPS model: one dilated ResNet, one DeepLab head per task, resized."""

    def __init__(self, name, channels, dilation=(False, True, True)):
        super().__init__()
        self.backbone = RefResNet(name, dilation)
        width = 512 * CONFIGS[name][0].expansion
        self.heads = nn.ModuleDict({t: deeplab_head(width, c) for t, c in channels.items()})

    def forward(self, x):
        feat = self.backbone(x)
        size = x.shape[-2:]
        return {
            t: F.interpolate(head(feat), size=size, mode="bilinear", align_corners=False)
            for t, head in self.heads.items()
        }
