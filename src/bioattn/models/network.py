"""A CNN wrapped with what attention experiments need: attendable layers, input normalisation and
the readout features that binary detectors see.

Attendable layers are the ``nn.Conv2d`` modules that are followed by an ``nn.ReLU`` module;
attention acts on that ReLU's output (after the nonlinearity, before any pooling). Layers are
named by the conv's dotted module path (``features.0``, as torchvision names them), by a
VGG-style alias (``conv1_1``: block number, counted by max-pooling layers, and position in the
block) or by a 1-based number in network order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from bioattn.errors import ConfigError, LayerError

#: Precisions a network's sweep forward passes can run at (float32 or autocast to a half type).
PRECISIONS = ("float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device name, checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {device!r} ({error}); use cpu, cuda or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was asked for but this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use cpu or auto"
        )
    return resolved


@dataclass(frozen=True)
class LayerInfo:
    """One attendable layer."""

    number: int  # 1-based position among attendable layers
    name: str  # dotted path of the conv module, e.g. "features.0"
    alias: str  # VGG-style alias, e.g. "conv1_1"
    activation: str  # dotted path of the ReLU whose output attention scales
    channels: int  # number of feature maps


def discover_layers(module: nn.Module) -> list[LayerInfo]:
    """Find the attendable layers of ``module``: each Conv2d with the next ReLU module after it.

    Modules are visited in registration order, which for ``nn.Sequential`` stacks (VGG and the
    default network) is execution order. A conv whose next conv comes before any ReLU has no
    module activation to hook and is skipped.
    """
    layers: list[LayerInfo] = []
    pending: tuple[str, nn.Conv2d] | None = None
    block, position = 1, 0
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            pending = (name, child)
        elif isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
            if position:
                block, position = block + 1, 0
        elif isinstance(child, nn.ReLU) and pending is not None:
            conv_name, conv = pending
            position += 1
            layers.append(
                LayerInfo(
                    number=len(layers) + 1,
                    name=conv_name,
                    alias=f"conv{block}_{position}",
                    activation=name,
                    channels=conv.out_channels,
                )
            )
            pending = None
    return layers


@dataclass
class Network:
    """A CNN in eval mode plus its attendable layers, normalisation and detector readout.

    ``readout`` names the module whose *input* is the feature vector that detectors read
    (the default network's final ``classifier``: its input is the globally pooled features;
    VGG-16's ``classifier.6``: its input is fc7).
    """

    module: nn.Module
    name: str
    readout: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None = None  # side length images are resized/cropped to; None: any size
    categories: tuple[str, ...] = ()  # categories of the classifier head, if known
    layers: list[LayerInfo] = field(default_factory=list)
    precision: str = "float32"  # forward passes of sweeps: "float32", "bfloat16" or "float16"

    def __post_init__(self) -> None:
        self.module.eval()
        if not self.layers:
            self.layers = discover_layers(self.module)
        if not self.layers:
            raise LayerError(
                f"model {self.name!r} has no attendable layers: bioattn attends the output of an "
                "nn.ReLU module that follows an nn.Conv2d (functional relu cannot be hooked)"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        modules = dict(self.module.named_modules())
        if self.readout not in modules:
            raise LayerError(
                f"readout module {self.readout!r} not found in model {self.name!r}; "
                f"give the module whose input is the feature vector (e.g. the last nn.Linear)"
            )

    # --- layers ---------------------------------------------------------------------------
    def resolve_layer(self, spec: str | int | LayerInfo) -> LayerInfo:
        """Resolve a dotted path, alias, activation path or 1-based number to a layer."""
        if isinstance(spec, LayerInfo):
            return spec
        text = str(spec).strip()
        if text.isdigit():
            number = int(text)
            if 1 <= number <= len(self.layers):
                return self.layers[number - 1]
        for layer in self.layers:
            if text in (layer.name, layer.alias, layer.activation):
                return layer
        raise LayerError(
            f"unknown layer {spec!r} for model {self.name!r}; valid layers are "
            f"1..{len(self.layers)} or: "
            + ", ".join(f"{layer.alias} ({layer.name})" for layer in self.layers)
        )

    def resolve_layers(self, specs: Sequence[str | int] | str | None) -> list[LayerInfo]:
        """Resolve several layers; ``None`` or ``"all"`` means every attendable layer."""
        if specs is None or specs == "all" or list(specs) == ["all"]:
            return list(self.layers)
        if isinstance(specs, str):
            specs = [s for s in specs.split(",") if s.strip()]
        return [self.resolve_layer(s) for s in specs]

    def submodule(self, path: str) -> nn.Module:
        """The module at dotted ``path``."""
        return self.module.get_submodule(path)

    # --- device and precision -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (images are moved there by :meth:`preprocess`)."""
        for tensor in self.module.parameters():
            return tensor.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Network:
        """Move the model to ``device`` ("cpu", "cuda", "cuda:1", or "auto": CUDA if present)."""
        self.module.to(resolve_device(device))
        return self

    def autocast(self) -> AbstractContextManager[object]:
        """Context for forward passes at the network's ``precision`` (float32: no change)."""
        if self.precision == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))

    # --- running --------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise [0, 1] images with the model's mean and std (channels broadcast), on the
        model's device."""
        images = images.to(self.device, torch.float32)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        if images.shape[1] != mean.shape[1] and mean.shape[1] == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - mean) / std

    @contextmanager
    def capture_readout(self) -> Iterator[list[torch.Tensor]]:
        """Context in which every forward pass appends its readout features to the yielded list."""
        store: list[torch.Tensor] = []

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            # float32 on the CPU, where detectors live (differentiable: gradients flow back)
            store.append(torch.flatten(inputs[0], 1).float().cpu())

        handle = self.submodule(self.readout).register_forward_pre_hook(hook)
        try:
            yield store
        finally:
            handle.remove()

    def readout_features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Detector features for [0, 1] ``images`` (no gradients), in batches."""
        outputs = []
        with torch.no_grad(), self.capture_readout() as store:
            for start in range(0, images.shape[0], batch_size):
                self.module(self.preprocess(images[start : start + batch_size]))
                outputs.append(store.pop())
        return torch.cat(outputs) if outputs else torch.empty(0)
