"""Benchmark models, written out so the benchmark needs nothing beyond torch: a ResNet-50 and a transformer."""

from __future__ import annotations

import torch.nn as nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, channels_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        channels_out = width * self.expansion
        self.conv1 = nn.Conv2d(channels_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or channels_in != channels_out:
            self.downsample = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), nn.BatchNorm2d(channels_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, channels = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(blocks):
                layers.append(Bottleneck(channels, width, stride if index == 0 else 1))
                channels = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


class Transformer(nn.Module):
    """A 6-layer pre-LN encoder over token ids, BERT-base-sized layers at width 512."""

    def __init__(self, vocab: int = 8000, width: int = 512, depth: int = 6, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 8, 4 * width, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        return self.head(self.norm(self.encoder(self.embed(tokens))).mean(1))


def resnet50() -> nn.Module:
    return ResNet50()


def transformer() -> nn.Module:
    return Transformer()


class DropoutBlock(nn.Module):
    """A Wide-ResNet-style basic block with its dropout between the convs: one DRO002 (dropout -> conv ->
    BatchNorm), whose fix moves the dropout after the second BatchNorm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        out = self.drop(self.bn1(self.conv1(x)).relu())
        return (self.bn2(self.conv2(out)) + x).relu()


class DropoutResNet(nn.Module):
    """`depth` residual blocks in an nn.Sequential, each with one fix for `audit --fix`."""

    def __init__(self, depth: int, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[DropoutBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def dropout_resnet_10() -> nn.Module:
    return DropoutResNet(10)


def dropout_resnet_20() -> nn.Module:
    return DropoutResNet(20)


def dropout_resnet_40() -> nn.Module:
    return DropoutResNet(40)


class CifarWide(nn.Module):
    """A CIFAR network that keeps its resolution (as kuangliu's GoogLeNet does): a 224x224 guess costs ~50x a
    32x32 forward and then fails at the classifier, which only fits 32x32 inputs."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (128, 192, 256, 256):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers, nn.AvgPool2d(8))
        self.classifier = nn.Linear(256 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def cifar_wide() -> CifarWide:
    return CifarWide()


class BasicBlock(nn.Module):
    """He et al.'s CIFAR block (two 3x3 convs, a 1x1 projection where the shape changes), in 1-D or 2-D."""

    def __init__(self, conv: type[nn.Module], norm: type[nn.Module], cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False), norm(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3, padding=1, bias=False), norm(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-20 (3 stages of 3 blocks, 16-32-64 channels): CIFAR-10's with 2-D convs, a signal classifier's
    (ECG, audio) with 1-D ones."""

    def __init__(self, dims: int = 2, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.stem = nn.Sequential(conv(in_channels, 16, 3, padding=1, bias=False), norm(16), nn.ReLU())
        blocks, channels = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(3):
                blocks.append(BasicBlock(conv, norm, channels, width, stride if index == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        features = self.blocks(self.stem(x))
        return self.head(features.flatten(2).mean(2))


def cifar_resnet20() -> SmallResNet:
    return SmallResNet(dims=2)


def conv1d_resnet20() -> SmallResNet:
    return SmallResNet(dims=1, in_channels=1, classes=5)
