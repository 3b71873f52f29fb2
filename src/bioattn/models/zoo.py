"""The model zoo: the small default network for Fashion-MNIST, a torchvision-compatible VGG-16,
and any user model given as ``"package.module:callable"``.

:func:`build_network` turns a model spec (and optionally a weights file) into a
:class:`~bioattn.models.network.Network`. Built-in specs are listed by :func:`list_models`.

User models
-----------
A spec ``"package.module:callable"`` imports ``package.module`` and calls ``callable()`` with no
arguments. It may return

* a :class:`Network`, used as it is; or
* an ``nn.Module``, which is wrapped in a :class:`Network`. Its settings default to: readout = the
  last ``nn.Linear`` in module order (detectors read that layer's input); ImageNet mean and std
  when the first ``nn.Conv2d`` takes 3 channels, otherwise 0.5 / 0.5 per channel; any input size;
  no category names. The Python module that defines the callable may override these with the
  attributes ``bioattn_readout`` (dotted module path), ``bioattn_mean`` and ``bioattn_std``
  (sequences of floats), ``bioattn_input_size`` (int or None) and ``bioattn_categories``
  (sequence of names).

Attendable layers are the ``nn.Conv2d`` modules followed by an ``nn.ReLU`` *module*; a model that
calls ``F.relu`` in ``forward`` has no layers bioattn can attend.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from bioattn.data.fashion_mnist import FASHION_MNIST_CATEGORIES
from bioattn.errors import ConfigError, WeightsError
from bioattn.models.network import Network
from bioattn.models.weights import load_state_dict_file, load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Channel widths of the default network: small enough to train in minutes on two cores.
DEFAULT_FASHION_WIDTHS = (16, 32, 64)
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)

#: Category names of the default network's classifier head (Fashion-MNIST's classes).
FASHION_CATEGORIES = FASHION_MNIST_CATEGORIES

#: Conv layer indices in torchvision's VGG-16 ``features`` (configuration "D").
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: Output channels per VGG-16 conv; "M" marks a 2x2 max-pooling layer.
_VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

_BUILTIN = ("fashion-vgg", "vgg16")
_FASHION_CONV_INDICES = (0, 2, 5, 7, 10, 12)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class FashionVGG(nn.Module):
    """Small VGG-style network for 1-channel images, fully convolutional.

    Three blocks of two 3x3 convs (widths ``c1, c2, c3``), each conv followed by a ReLU module, with
    2x2 max pooling between blocks; then global average pooling and a linear classifier. Because
    of the global pooling it accepts any input size from 4x4 up (28x28 digits, 56x56 arrays).

    ``batch_norm=True`` puts a BatchNorm2d between each conv and its ReLU; it is used only while
    training (it speeds convergence) and folded into the convs afterwards with
    :func:`fold_batch_norm`, so the network that experiments see is a plain conv-ReLU stack.
    """

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_FASHION_WIDTHS,
        num_classes: int = 10,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ConfigError(f"FashionVGG widths must be three positive ints, got {widths!r}")
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        c1, c2, c3 = widths
        self.widths = widths
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        pairs = [(1, c1), (c1, c1), None, (c1, c2), (c2, c2), None, (c2, c3), (c3, c3)]
        for pair in pairs:
            if pair is None:
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(_conv3x3(*pair))
            if batch_norm:
                layers.append(nn.BatchNorm2d(pair[1]))
            layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, int(num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 1, H, W)`` images."""
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def fold_batch_norm(model: FashionVGG) -> FashionVGG:
    """A BatchNorm-free FashionVGG computing exactly what ``model`` computes in eval mode.

    Each BatchNorm's running statistics and affine parameters are folded into the preceding
    conv: ``w' = w * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)``.
    """
    folded = FashionVGG(model.widths, model.classifier.out_features, batch_norm=False)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    targets = [m for m in folded.features if isinstance(m, nn.Conv2d)]
    if len(norms) != len(convs):
        raise ConfigError("fold_batch_norm needs a FashionVGG built with batch_norm=True")
    with torch.no_grad():
        for conv, norm, target in zip(convs, norms, targets, strict=True):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            target.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            target.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
        folded.classifier.load_state_dict(model.classifier.state_dict())
    return folded.eval()


class VGG16(nn.Module):
    """VGG-16 (configuration "D", no batch norm) with torchvision's module layout and key names.

    ``features`` holds the 13 convs (indices 0, 2, 5, ..., 28), each followed by an in-place
    ReLU, with 2x2 max pooling after each block; ``avgpool`` resizes the maps to 7x7, and
    ``classifier`` is fc6 (0), fc7 (3) and the output layer (6) with ReLU and dropout between.
    A torchvision ``vgg16`` state dict loads into it unchanged. Initialised as torchvision does:
    Kaiming-normal convs (fan out), N(0, 0.01) linear weights, zero biases.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=True))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, int(num_classes)),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 3, H, W)`` images (H, W >= 32)."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def list_models() -> list[str]:
    """Names of the built-in models accepted by :func:`build_network`."""
    return list(_BUILTIN)


def _spec_help() -> str:
    return (
        "valid models are " + ", ".join(repr(name) for name in _BUILTIN) + ", or "
        "'package.module:callable' naming a function that returns an nn.Module or a Network"
    )


def _fashion_widths(state: dict[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """FashionVGG widths read from a state dict, or None if it does not look like one."""
    keys = [f"features.{i}.weight" for i in _FASHION_CONV_INDICES[::2]]
    if all(k in state and state[k].ndim == 4 for k in keys):
        c1, c2, c3 = (int(state[k].shape[0]) for k in keys)
        return c1, c2, c3
    return None


def _classes_in(state: dict[str, torch.Tensor], key: str) -> int | None:
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _build_fashion(
    weights: str | Path | None, num_classes: int | None, widths: Sequence[int] | None
) -> Network:
    state = None
    if weights is not None:
        if str(weights) == "torchvision":
            raise WeightsError(
                "weights='torchvision' exists only for 'vgg16'; give 'fashion-vgg' a "
                ".safetensors/.pth file saved from a FashionVGG"
            )
        state = load_state_dict_file(weights)
        if widths is None:
            widths = _fashion_widths(state)
        if num_classes is None:
            num_classes = _classes_in(state, "classifier.weight")
    module = FashionVGG(widths or DEFAULT_FASHION_WIDTHS, num_classes or 10)
    if state is not None:
        load_weights(module, state)
    n = module.classifier.out_features
    return Network(
        module=module,
        name="fashion-vgg",
        readout="classifier",
        mean=FASHION_MEAN,
        std=FASHION_STD,
        input_size=None,
        categories=FASHION_CATEGORIES if n == len(FASHION_CATEGORIES) else (),
    )


def _torchvision_vgg16_state() -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """torchvision's ImageNet VGG-16 weights (from its download cache) and category names."""
    try:
        import torchvision
    except ImportError as error:
        raise WeightsError(
            "weights='torchvision' needs torchvision, which is not installed; install the "
            "'torchvision' extra (pip install 'bioattn[torchvision]') or pass the path of a "
            "VGG-16 .pth/.safetensors state dict as weights"
        ) from error
    try:
        tv_weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
        model = torchvision.models.vgg16(weights=tv_weights)
        categories = tuple(tv_weights.meta.get("categories", ()))
    except Exception as error:
        raise WeightsError(
            "could not get torchvision's VGG16_Weights.IMAGENET1K_V1 "
            f"({type(error).__name__}: {error}); torchvision downloads them on first use into "
            "the torch hub cache (TORCH_HOME), which needs internet access once - or pass the "
            "path of a VGG-16 .pth/.safetensors state dict as weights"
        ) from error
    return model.state_dict(), categories


def _build_vgg16(weights: str | Path | None, num_classes: int | None) -> Network:
    state = None
    categories: tuple[str, ...] = ()
    if weights is not None:
        if str(weights) == "torchvision":
            state, categories = _torchvision_vgg16_state()
        else:
            state = load_state_dict_file(weights)
        if num_classes is None:
            num_classes = _classes_in(state, "classifier.6.weight")
    if state is None:
        module = VGG16(num_classes or 1000)
    else:
        # Build without allocating or initialising (138M parameters), then take the file's tensors.
        with torch.device("meta"):
            module = VGG16(num_classes or 1000)
        load_weights(module, state, assign=True)
    return Network(
        module=module,
        name="vgg16",
        readout="classifier.6",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=224,
        categories=categories if len(categories) == module.classifier[6].out_features else (),
    )


def _import_callable(spec: str) -> tuple[object, object]:
    """Import ``package.module:callable``; returns (python module, callable)."""
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise ConfigError(f"unknown model {spec!r}; {_spec_help()}")
    try:
        py_module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(
            f"cannot import {module_name!r} for model {spec!r}: {type(error).__name__}: {error}; "
            "make sure the module is importable (installed or on PYTHONPATH)"
        ) from error
    target: object = py_module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r} (model {spec!r}); name a "
                "function or class in it that builds the model"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{spec!r} is not callable; name a function that returns an nn.Module")
    return py_module, target


def _last_linear(module: nn.Module) -> str | None:
    name = None
    for path, child in module.named_modules():
        if isinstance(child, nn.Linear):
            name = path
    return name


def _first_conv_channels(module: nn.Module) -> int | None:
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            return child.in_channels
    return None


def _floats(value: object, what: str, spec: str) -> tuple[float, ...]:
    try:
        if isinstance(value, (int, float, str)):
            values: tuple[float, ...] = (float(value),)
        else:
            values = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what} of model {spec!r} must be numbers, got {value!r}") from error
    if not values:
        raise ConfigError(f"{what} of model {spec!r} is empty; give one value per input channel")
    return values


def _build_user(spec: str, weights: str | Path | None) -> Network:
    py_module, factory = _import_callable(spec)
    try:
        built = factory()  # type: ignore[operator]
    except Exception as error:
        raise ConfigError(
            f"calling {spec!r} failed: {type(error).__name__}: {error}; the callable must take no "
            "arguments and return an nn.Module or a Network"
        ) from error
    if isinstance(built, Network):
        network = built
    elif isinstance(built, nn.Module):
        readout = getattr(py_module, "bioattn_readout", None) or _last_linear(built)
        if readout is None:
            raise ConfigError(
                f"model {spec!r} has no nn.Linear to read features from; set "
                "bioattn_readout = '<dotted module path>' in its module, naming the module whose "
                "input is the feature vector for detectors"
            )
        in_channels = _first_conv_channels(built) or 3
        default_mean, default_std = (
            (IMAGENET_MEAN, IMAGENET_STD)
            if in_channels == 3
            else ((0.5,) * in_channels, (0.5,) * in_channels)
        )
        input_size = getattr(py_module, "bioattn_input_size", None)
        network = Network(
            module=built,
            name=spec,
            readout=str(readout),
            mean=_floats(getattr(py_module, "bioattn_mean", default_mean), "bioattn_mean", spec),
            std=_floats(getattr(py_module, "bioattn_std", default_std), "bioattn_std", spec),
            input_size=None if input_size is None else int(input_size),
            categories=tuple(str(c) for c in getattr(py_module, "bioattn_categories", ())),
        )
    else:
        raise ConfigError(
            f"{spec!r} returned {type(built).__name__}; it must return an nn.Module or a Network"
        )
    if weights is not None:
        if str(weights) == "torchvision":
            raise WeightsError(
                "weights='torchvision' exists only for 'vgg16'; give a user model a "
                ".safetensors/.pth state dict file"
            )
        load_weights(network.module, weights)
    network.module.eval()
    return network


def build_network(
    spec: str,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    widths: Sequence[int] | None = None,
    seed: int = 0,
) -> Network:
    """Build a model and wrap it as a :class:`Network` in eval mode.

    Args:
        spec: ``"fashion-vgg"`` (the small default network), ``"vgg16"`` (torchvision-compatible
            VGG-16, readout fc7) or ``"package.module:callable"`` (see the module docstring).
        weights: a ``.safetensors``/``.pth``/``.pt`` state dict file (loaded safely and checked
            against the model), ``"torchvision"`` for ``vgg16``'s ImageNet weights from
            torchvision, or None to keep the seeded random initialisation.
        num_classes: size of the classifier head of a built-in model; by default read from the
            weights file, else 10 (fashion-vgg) or 1000 (vgg16).
        widths: channel widths of fashion-vgg's three blocks; by default read from the weights
            file, else DEFAULT_FASHION_WIDTHS (16, 32, 64).
        seed: seed for the random initialisation (the global RNG state is left untouched).

    Raises:
        ConfigError: unknown spec, options that do not apply to it, or a user model that cannot
            be imported or built.
        WeightsError: weights that cannot be loaded safely or do not match the model.
    """
    spec = str(spec).strip()
    builtin = spec.lower()
    if builtin not in _BUILTIN and ":" not in spec:
        raise ConfigError(f"unknown model {spec!r}; {_spec_help()}")
    if widths is not None and builtin != "fashion-vgg":
        raise ConfigError(f"widths applies only to 'fashion-vgg', not to model {spec!r}")
    if num_classes is not None and builtin not in _BUILTIN:
        raise ConfigError(
            f"num_classes applies only to built-in models, not to {spec!r}; build the head you "
            "need in the callable"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if builtin == "fashion-vgg":
            return _build_fashion(weights, num_classes, widths)
        if builtin == "vgg16":
            return _build_vgg16(weights, num_classes)
        return _build_user(spec, weights)
