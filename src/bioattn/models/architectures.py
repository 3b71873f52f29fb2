"""Standard ImageNet architectures, written here (no torchvision needed) with the module layout of
their original releases, so that the published weight files load unchanged.

* :class:`AlexNet`, :class:`ResNet` (``resnet18``: :class:`BasicBlock` ×[2, 2, 2, 2];
  ``resnet50``: :class:`Bottleneck` ×[3, 4, 6, 3]) follow torchvision's ``torchvision.models``
  classes: a torchvision ``alexnet()`` / ``resnet18()`` / ``resnet50()`` state dict (for example
  ``alexnet-owt-7be5be79.pth``, ``resnet18-f37072fd.pth``, ``resnet50-0676ba61.pth``) has exactly
  the same keys and shapes.
* :class:`CORnetZ` and :class:`CORnetS` follow the DiCarlo lab's CORnet
  (github.com/dicarlolab/CORnet, ``cornet_z.py`` and ``cornet_s.py``): ``V1``, ``V2``, ``V4``,
  ``IT`` and ``decoder`` with the same submodule names (``V2.conv_input``, ``V2.norm1_0``,
  ``decoder.linear``, ...). The released checkpoints (``cornet_z-5c427c9c.pth``,
  ``cornet_s-1d3f7974.pth``) hold the weights of an ``nn.DataParallel`` under ``"state_dict"``,
  with every key prefixed ``module.``; :func:`bioattn.models.weights.load_state_dict_file`
  unwraps both.

Modules are reused exactly as in the originals: a ResNet block has one ``relu`` module called
two (BasicBlock) or three (Bottleneck) times, and a CORnet-S block applies the same
``conv1``/``conv2``/``conv3`` and ``nonlin1``/``nonlin2``/``nonlin3`` at each of its ``times``
steps (with one set of BatchNorms per step, ``norm1_0``, ``norm1_1``, ...). Every forward pass is
a fixed sequence of module calls with no state changed while it runs, so ``torch.fx`` traces
each architecture into a graph that computes the same function.

Each ``build_<name>(num_classes=1000)`` returns the module with the original's random
initialisation (drawn from the global RNG; :func:`bioattn.models.zoo.build_network` seeds it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bioattn.errors import ConfigError

__all__ = [
    "ARCHITECTURES",
    "AlexNet",
    "Architecture",
    "BasicBlock",
    "Bottleneck",
    "CORblockS",
    "CORblockZ",
    "CORnetS",
    "CORnetZ",
    "ResNet",
    "build_alexnet",
    "build_cornet_s",
    "build_cornet_z",
    "build_resnet18",
    "build_resnet50",
]


def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or int(num_classes) < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


# --- AlexNet ----------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """AlexNet as in torchvision (the "one weird trick" variant: 64-192-384-256-256 maps).

    ``features`` holds five convs (indices 0, 3, 6, 8, 10), each followed by an in-place ReLU,
    with 3x3/2 max pooling after the first, second and fifth; ``avgpool`` resizes the maps to
    6x6; ``classifier`` is dropout, fc6 (1), ReLU, dropout, fc7 (4), ReLU and the output layer
    (6). Inputs must be at least 63x63 pixels. Initialised with PyTorch's defaults, as
    torchvision's AlexNet is.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        num_classes = _check_classes(num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 3, H, W)`` images (H, W >= 63)."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_alexnet(num_classes: int = 1000) -> AlexNet:
    """torchvision-compatible AlexNet (readout: ``classifier.6``, whose input is fc7)."""
    return AlexNet(num_classes)


# --- ResNet -----------------------------------------------------------------------------------


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs with BatchNorm; one ``relu`` module called twice (after
    ``bn1`` and after the residual sum)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet-50 block (torchvision's "v1.5": the stride is on the 3x3 conv): 1x1, 3x3, 1x1 convs
    with BatchNorm; one ``relu`` module called three times (after ``bn1``, after ``bn2`` and after
    the residual sum)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet with torchvision's module layout and key names.

    ``conv1`` (7x7/2), ``bn1``, ``relu``, ``maxpool`` (3x3/2), then ``layer1`` .. ``layer4`` of
    ``blocks`` (64, 128, 256, 512 planes; stride 2 from ``layer2`` on, with a 1x1 conv +
    BatchNorm ``downsample`` where the shape changes), ``avgpool`` (global) and ``fc``.
    Initialised as torchvision does: Kaiming-normal convs (fan out), BatchNorm weight 1 and bias
    0, PyTorch's default for ``fc``. Accepts any input from 32x32 up.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        num_classes = _check_classes(num_classes)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 3, H, W)`` images."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet18(num_classes: int = 1000) -> ResNet:
    """torchvision-compatible ResNet-18 (readout: ``fc``, whose input is the pooled features)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def build_resnet50(num_classes: int = 1000) -> ResNet:
    """torchvision-compatible ResNet-50 (readout: ``fc``, whose input is the pooled features)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# --- CORnet -----------------------------------------------------------------------------------


def _decoder(in_features: int, num_classes: int) -> nn.Sequential:
    """CORnet's ``decoder``: global average pooling, flatten, ``linear``, ``output``."""
    return nn.Sequential(
        OrderedDict(
            [
                ("avgpool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten(1)),
                ("linear", nn.Linear(in_features, num_classes)),
                ("output", nn.Identity()),
            ]
        )
    )


class CORblockZ(nn.Module):
    """One CORnet-Z area: ``conv`` (with bias, "same" padding), ``nonlin`` (ReLU), ``pool``
    (3x3/2 max pooling) and ``output`` (identity, to read the area's output by name)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
        )
        self.nonlin = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.output = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.pool(self.nonlin(self.conv(x))))


class CORnetZ(nn.Module):
    """CORnet-Z (Kubilius et al. 2018): areas ``V1`` (7x7/2 conv, 64 maps), ``V2`` (128), ``V4``
    (256), ``IT`` (512), each conv → ReLU → max pool, and a ``decoder`` (global average pool,
    ``linear``). Initialised as released: Xavier-uniform conv and linear weights, zero biases.
    Accepts any input from 16x16 up."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        num_classes = _check_classes(num_classes)
        self.V1 = CORblockZ(3, 64, kernel_size=7, stride=2)
        self.V2 = CORblockZ(64, 128)
        self.V4 = CORblockZ(128, 256)
        self.IT = CORblockZ(256, 512)
        self.decoder = _decoder(512, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 3, H, W)`` images."""
        return self.decoder(self.IT(self.V4(self.V2(self.V1(x)))))


class CORblockS(nn.Module):
    """One recurrent CORnet-S area, run for ``times`` steps.

    ``conv_input`` (1x1) maps the input to ``out_channels``; then at each step t a bottleneck
    ``conv1`` (1x1, 4x wider) → ``norm1_t`` → ``nonlin1`` → ``conv2`` (3x3) → ``norm2_t`` →
    ``nonlin2`` → ``conv3`` (1x1) → ``norm3_t``, plus a skip connection, → ``nonlin3``. The same
    convs and ReLU modules serve every step; each step has its own BatchNorms. Step 0 halves the
    resolution (``conv2`` at stride 2; the skip is ``skip`` (1x1/2) → ``norm_skip``); later steps
    keep it (stride 1; the skip is the identity).

    The released code switches ``conv2.stride`` between 2 and 1 inside ``forward``. Here
    ``conv2`` keeps stride 1 and step 0 keeps every second row and column of its output, which
    is exactly the stride-2 convolution (3x3 kernel, padding 1: output (i, j) of stride 2 is output
    (2i, 2j) of stride 1), so a forward pass changes no module state and traces faithfully with
    ``torch.fx``; it costs some extra arithmetic in step 0's ``conv2``.
    """

    scale = 4  # width of the bottleneck convs relative to out_channels

    def __init__(self, in_channels: int, out_channels: int, times: int = 1) -> None:
        super().__init__()
        self.times = int(times)
        wide = out_channels * self.scale
        self.conv_input = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.skip = nn.Conv2d(out_channels, out_channels, kernel_size=1, stride=2, bias=False)
        self.norm_skip = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(out_channels, wide, kernel_size=1, bias=False)
        self.nonlin1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(wide, wide, kernel_size=3, stride=1, padding=1, bias=False)
        self.nonlin2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(wide, out_channels, kernel_size=1, bias=False)
        self.nonlin3 = nn.ReLU(inplace=True)
        self.output = nn.Identity()
        for t in range(self.times):
            setattr(self, f"norm1_{t}", nn.BatchNorm2d(wide))
            setattr(self, f"norm2_{t}", nn.BatchNorm2d(wide))
            setattr(self, f"norm3_{t}", nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_input(x)
        for t in range(self.times):
            skip = self.norm_skip(self.skip(x)) if t == 0 else x
            x = self.nonlin1(getattr(self, f"norm1_{t}")(self.conv1(x)))
            x = self.conv2(x)
            if t == 0:
                x = x[:, :, ::2, ::2]  # = conv2 at stride 2 (see the class docstring)
            x = self.nonlin2(getattr(self, f"norm2_{t}")(x))
            x = getattr(self, f"norm3_{t}")(self.conv3(x))
            x += skip
            x = self.output(self.nonlin3(x))
        return x


class CORnetS(nn.Module):
    """CORnet-S (Kubilius et al. 2019): a feedforward ``V1`` (7x7/2 conv, BatchNorm, ReLU, max
    pool, 3x3 conv, BatchNorm, ReLU; 64 maps) and recurrent areas ``V2`` (128 maps, 2 steps),
    ``V4`` (256, 4 steps), ``IT`` (512, 2 steps) (:class:`CORblockS`), then a ``decoder``
    (global average pool, ``linear``). Initialised as released: conv weights N(0, 2/n) with
    n = k·k·out_channels, BatchNorm weight 1 and bias 0, PyTorch's default for the linear layer.
    Accepts any input from 16x16 up."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        num_classes = _check_classes(num_classes)
        self.V1 = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("norm1", nn.BatchNorm2d(64)),
                    ("nonlin1", nn.ReLU(inplace=True)),
                    ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                    ("conv2", nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)),
                    ("norm2", nn.BatchNorm2d(64)),
                    ("nonlin2", nn.ReLU(inplace=True)),
                    ("output", nn.Identity()),
                ]
            )
        )
        self.V2 = CORblockS(64, 128, times=2)
        self.V4 = CORblockS(128, 256, times=4)
        self.IT = CORblockS(256, 512, times=2)
        self.decoder = _decoder(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 3, H, W)`` images."""
        return self.decoder(self.IT(self.V4(self.V2(self.V1(x)))))


def build_cornet_z(num_classes: int = 1000) -> CORnetZ:
    """CORnet-Z with the released key names (readout: ``decoder.linear``)."""
    return CORnetZ(num_classes)


def build_cornet_s(num_classes: int = 1000) -> CORnetS:
    """CORnet-S with the released key names (readout: ``decoder.linear``)."""
    return CORnetS(num_classes)


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """A built-in ImageNet architecture: how to build it and what the zoo needs to know."""

    name: str  # model spec, e.g. "resnet18"
    build: Callable[[int], nn.Module]  # num_classes -> module (random initialisation)
    readout: str  # module whose input is the feature vector detectors read
    head: str  # state-dict key of the classifier weight (its rows: number of classes)
    source: str  # where the original (and its weight files) come from
    min_input: int  # smallest square input side the architecture accepts
    torchvision_weights: str | None = None  # torchvision weights enum member, if any


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "alexnet",
            build_alexnet,
            "classifier.6",
            "classifier.6.weight",
            "torchvision.models.alexnet",
            63,
            "AlexNet_Weights.IMAGENET1K_V1",
        ),
        Architecture(
            "resnet18",
            build_resnet18,
            "fc",
            "fc.weight",
            "torchvision.models.resnet18",
            32,
            "ResNet18_Weights.IMAGENET1K_V1",
        ),
        Architecture(
            "resnet50",
            build_resnet50,
            "fc",
            "fc.weight",
            "torchvision.models.resnet50",
            32,
            "ResNet50_Weights.IMAGENET1K_V1",
        ),
        Architecture(
            "cornet-z",
            build_cornet_z,
            "decoder.linear",
            "decoder.linear.weight",
            "dicarlolab/CORnet cornet_z (weights: cornet_z-5c427c9c.pth)",
            16,
        ),
        Architecture(
            "cornet-s",
            build_cornet_s,
            "decoder.linear",
            "decoder.linear.weight",
            "dicarlolab/CORnet cornet_s (weights: cornet_s-1d3f7974.pth)",
            16,
        ),
    )
}
