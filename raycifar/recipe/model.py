"""The custom ResNet of the spec, built from blocks that read like its diagram.

    PrepLayer  conv3x3 -> BN -> ReLU                                   [64]
    Layer1     X = conv3x3 -> MaxPool2 -> BN -> ReLU                   [128]
               R1 = ResBlock(X) = (conv3x3 -> BN -> ReLU) x 2          [128]
               out = X + R1
    Layer2     conv3x3 -> MaxPool2 -> BN -> ReLU                       [256]
    Layer3     like Layer1                                             [512]
    MaxPool(4) -> FC(512 -> 10) -> logits (softmax lives in the loss and in predictions)

Convs and the FC carry no bias: 6,573,120 parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """conv3x3 (stride 1, pad 1) [-> MaxPool2] -> BN -> ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResBlock(nn.Sequential):
    """Two conv-BN-ReLU units at constant width; the caller adds the input back."""

    def __init__(self, channels: int):
        super().__init__(conv_bn(channels, channels), conv_bn(channels, channels))


class ResLayer(nn.Module):
    """X = conv_bn(pool); out = X + ResBlock(X)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = conv_bn(c_in, c_out, pool=True)
        self.res = ResBlock(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.res(x)


class CustomResNet(nn.Module):
    """The spec's network at `width=64`; another width scales every layer alike (w, 2w, 4w, 8w
    channels), for smoke runs and tests that exercise the machinery rather than the recipe."""

    def __init__(self, num_classes: int = 10, logit_scale: float = 1.0, width: int = 64):
        super().__init__()
        w = width
        self.prep = conv_bn(3, w)
        self.layer1 = ResLayer(w, 2 * w)
        self.layer2 = conv_bn(2 * w, 4 * w, pool=True)
        self.layer3 = ResLayer(4 * w, 8 * w)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * w, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
