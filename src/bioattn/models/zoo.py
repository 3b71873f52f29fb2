"""The model zoo: the small default network for Fashion-MNIST and its deeper sibling,
torchvision-compatible VGG-16, AlexNet, ResNet-18 and ResNet-50, the DiCarlo lab's CORnet-Z and
CORnet-S, and any user model given as ``"package.module:callable"``.

:func:`build_network` turns a model spec (and optionally a weights file) into a
:class:`~bioattn.models.network.Network`. Built-in specs are listed by :func:`list_models`.

Embedded models
---------------
``fashion-vgg`` (the default: 3 blocks of 2 convs, widths 16, 32, 64) and ``fashion-vgg16``
(VGG-16's 13 convs in blocks of 2, 2, 3, 3, 3, widths 16, 32, 64, 64, 64, max pooling after
blocks 1-3 only) are configurations of one class, :class:`FashionVGG`
(:data:`FASHION_ARCHITECTURES`): 1-channel inputs of any size (global average pooling),
Fashion-MNIST's mean and std, readout ``classifier``. They are trained here
(:mod:`bioattn.models.train`); a weights file gives its widths and number of classes.

ImageNet models
---------------
``vgg16``, ``alexnet``, ``resnet18``, ``resnet50``, ``cornet-z`` and ``cornet-s`` are written in
this project (:mod:`bioattn.models.architectures`; torchvision is not needed) with the original
releases' state-dict keys and shapes, so their published weight files load as they are
(``torch.load(..., weights_only=True)`` or safetensors; CORnet's ``{"state_dict": {"module.…"}}``
checkpoints are unwrapped). All use ImageNet's mean and std and 224-pixel inputs. Detectors read
the input of ``classifier.6`` (fc7) for VGG-16 and AlexNet, of ``fc`` (the globally pooled
features) for the ResNets and of ``decoder.linear`` (the pooled IT features) for CORnet;
``build_network(..., readout=...)`` reads another module's input instead. A weights file that
lacks BatchNorm's ``num_batches_tracked`` counters (files saved before PyTorch 0.4.1) is given
zero counters, which eval-mode forward passes never use.

User models
-----------
A spec ``"package.module:callable"`` imports ``package.module`` and calls ``callable()`` with no
arguments. A config or command line that names a callable therefore runs code: importing the
module runs its top level and the callable is then called, with your permissions. Configs are
code, so only use configs and specs you trust. The target must look like a model factory, which is
checked before anything is called: a Python function without required parameters, or an
``nn.Module`` (or :class:`Network`) subclass whose constructor needs no arguments. Refused with a
:class:`~bioattn.errors.ConfigError`, without calling them, are built-in and C functions
(``os:getcwd``), anything from the standard library (checked before importing), tools such as
pip, setuptools and pytest, bioattn outside ``bioattn.models``, dunder attributes, callables with
required parameters, classes that are not ``nn.Module`` subclasses and ``nn.Module`` instances.
These checks catch mistakes; they are no sandbox for an untrusted module. The callable may return

* a :class:`Network`, used as it is; or
* an ``nn.Module``, which is wrapped in a :class:`Network`. Its settings default to: readout = the
  last ``nn.Linear`` in module order (detectors read that layer's input); ImageNet mean and std
  when the first ``nn.Conv2d`` takes 3 channels, otherwise 0.5 / 0.5 per channel; any input size;
  no category names. The Python module that defines the callable may override these with the
  attributes ``bioattn_readout`` (dotted module path), ``bioattn_mean`` and ``bioattn_std``
  (sequences of floats), ``bioattn_input_size`` (int or None) and ``bioattn_categories``
  (sequence of names).

Attendable layers are the model's attention sites (:mod:`bioattn.models.sites`): every call of a
ReLU, ReLU6, LeakyReLU, GELU, SiLU or ELU (module or function) on feature maps.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bioattn.data.fashion_mnist import FASHION_MNIST_CATEGORIES
from bioattn.errors import ConfigError, WeightsError
from bioattn.models.architectures import ARCHITECTURES, Architecture
from bioattn.models.network import Network
from bioattn.models.sites import first_conv_channels
from bioattn.models.weights import check_state_dict, load_state_dict_file, load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Channel widths of the default network: small enough to train in minutes on two cores.
DEFAULT_FASHION_WIDTHS = (16, 32, 64)
#: Channel widths of fashion-vgg16's five blocks.
FASHION_VGG16_WIDTHS = (16, 32, 64, 64, 64)
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

_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class BlockBoundary(nn.Identity):
    """Marks the end of a block of convs that is not followed by pooling; computes nothing.

    Attention sites count blocks by pooling layers (for the ``conv<block>_<k>`` aliases); this
    module declares a block boundary (``bioattn_block_boundary``) where a network does not pool.
    """

    bioattn_leaf = True
    bioattn_block_boundary = True


class FashionVGG(nn.Module):
    """VGG-style network for 1-channel images, fully convolutional, in blocks of 3x3 convs.

    Block ``b`` holds ``convs[b]`` 3x3 convs of ``widths[b]`` maps, each conv followed by a ReLU
    module; a 2x2 max pooling follows the blocks numbered (from 1) in ``pool_after`` (default:
    every block but the last), and a :class:`BlockBoundary` (which computes nothing) follows
    every other block but the last, so that layers get VGG's aliases ``conv<block>_<k>``. Then
    global average pooling and a linear classifier. Because of the global pooling it accepts
    any input size from ``2 ** len(pool_after)`` pixels up (28x28 digits, 56x56 arrays).

    The default configuration is the default network ``fashion-vgg`` (three blocks of two
    convs, widths 16, 32, 64); :data:`FASHION_ARCHITECTURES` holds ``fashion-vgg16`` too
    (VGG-16's 2, 2, 3, 3, 3 convs; its conv indices in ``features`` are VGG-16's).

    ``batch_norm=True`` puts a BatchNorm2d between each conv and its ReLU; it is used only while
    training (it speeds convergence) and folded into the convs afterwards with
    :func:`fold_batch_norm`, so the network that experiments see is a plain conv-ReLU stack.
    """

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_FASHION_WIDTHS,
        num_classes: int = 10,
        batch_norm: bool = False,
        *,
        convs: Sequence[int] = (2, 2, 2),
        pool_after: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        convs = tuple(int(n) for n in convs)
        if not convs or min(convs) < 1:
            raise ConfigError(f"FashionVGG convs must be one positive int per block, got {convs!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != len(convs) or min(widths) < 1:
            count = _COUNT_WORDS[len(convs)] if len(convs) < len(_COUNT_WORDS) else len(convs)
            raise ConfigError(
                f"FashionVGG widths must be {count} positive ints (one per block of "
                f"convs {convs}), got {widths!r}"
            )
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        blocks = range(1, len(convs) + 1)
        pools = tuple(blocks[:-1]) if pool_after is None else tuple(int(b) for b in pool_after)
        if any(b not in blocks for b in pools) or len(set(pools)) != len(pools):
            raise ConfigError(
                f"FashionVGG pool_after must name distinct blocks 1..{len(convs)}, got {pools!r}"
            )
        self.widths = widths
        self.convs = convs
        self.pool_after = tuple(sorted(pools))
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        channels = 1
        for block, (n, width) in enumerate(zip(convs, widths, strict=True), start=1):
            for _ in range(n):
                layers.append(_conv3x3(channels, width))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU())
                channels = width
            if block in self.pool_after:
                layers.append(nn.MaxPool2d(2))
            elif block != len(convs):
                layers.append(BlockBoundary())
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], int(num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised ``(N, 1, H, W)`` images."""
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@dataclass(frozen=True)
class FashionArchitecture:
    """An embedded Fashion-MNIST network: a :class:`FashionVGG` configuration, trained here."""

    name: str
    convs: tuple[int, ...]  # convs per block
    widths: tuple[int, ...]  # default channel widths per block
    pool_after: tuple[int, ...]  # blocks (from 1) followed by 2x2 max pooling

    def build(
        self,
        widths: Sequence[int] | None = None,
        num_classes: int = 10,
        batch_norm: bool = False,
    ) -> FashionVGG:
        """A FashionVGG of this architecture (``widths`` default: :attr:`widths`)."""
        return FashionVGG(
            self.widths if widths is None else widths,
            num_classes,
            batch_norm,
            convs=self.convs,
            pool_after=self.pool_after,
        )

    def conv_indices(self) -> tuple[int, ...]:
        """Indices of the convs in ``features`` (without batch norm)."""
        indices, position = [], 0
        for block, n in enumerate(self.convs, start=1):
            for _ in range(n):
                indices.append(position)
                position += 2  # conv, ReLU
            if block != len(self.convs):
                position += 1  # MaxPool2d or BlockBoundary
        return tuple(indices)


#: The embedded networks (trained on Fashion-MNIST by :mod:`bioattn.models.train`), the
#: default first.
FASHION_ARCHITECTURES: dict[str, FashionArchitecture] = {
    "fashion-vgg": FashionArchitecture("fashion-vgg", (2, 2, 2), DEFAULT_FASHION_WIDTHS, (1, 2)),
    "fashion-vgg16": FashionArchitecture(
        "fashion-vgg16", (2, 2, 3, 3, 3), FASHION_VGG16_WIDTHS, (1, 2, 3)
    ),
}
#: The default embedded network.
DEFAULT_FASHION_ARCHITECTURE = "fashion-vgg"


def fashion_architecture(name: str) -> FashionArchitecture:
    """The embedded architecture ``name``; a ConfigError lists the valid ones otherwise."""
    try:
        return FASHION_ARCHITECTURES[str(name).strip().lower()]
    except KeyError:
        raise ConfigError(
            f"unknown embedded architecture {name!r}; the embedded (trained here) networks are "
            + ", ".join(repr(n) for n in FASHION_ARCHITECTURES)
        ) from None


def fold_batch_norm(model: FashionVGG) -> FashionVGG:
    """A BatchNorm-free FashionVGG computing exactly what ``model`` computes in eval mode.

    Each BatchNorm's running statistics and affine parameters are folded into the preceding
    conv: ``w' = w * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)``.
    """
    folded = FashionVGG(
        model.widths,
        model.classifier.out_features,
        batch_norm=False,
        convs=model.convs,
        pool_after=model.pool_after,
    )
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


def _fashion_widths(
    arch: FashionArchitecture, state: Mapping[str, torch.Tensor]
) -> tuple[int, ...] | None:
    """``arch``'s widths read from a state dict (the first conv of each block), or None if the
    state dict does not hold that architecture's convs."""
    indices = arch.conv_indices()
    keys = [f"features.{i}.weight" for i in indices]
    if not all(k in state and state[k].ndim == 4 for k in keys):
        return None
    firsts = [sum(arch.convs[:b]) for b in range(len(arch.convs))]
    return tuple(int(state[keys[i]].shape[0]) for i in firsts)


def _classes_in(state: dict[str, torch.Tensor], key: str) -> int | None:
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _build_fashion(
    arch: FashionArchitecture,
    weights: str | Path | None,
    num_classes: int | None,
    widths: Sequence[int] | None,
) -> Network:
    """An embedded Fashion-MNIST network (one of :data:`FASHION_ARCHITECTURES`) as a Network;
    widths and classes default to the weights file's."""
    state = None
    if weights is not None:
        if str(weights) == "torchvision":
            raise WeightsError(
                f"weights='torchvision' exists only for 'vgg16'; give {arch.name!r} a "
                f".safetensors/.pth file saved from a {arch.name!r} (FashionVGG)"
            )
        state = load_state_dict_file(weights)
        if widths is None:
            widths = _fashion_widths(arch, state)
        if num_classes is None:
            num_classes = _classes_in(state, "classifier.weight")
    module = arch.build(widths, num_classes or 10)
    if state is not None:
        _load_checked(module, state, arch.name, repr(str(weights)))
    n = module.classifier.out_features
    return Network(
        module=module,
        name=arch.name,
        readout="classifier",
        mean=FASHION_MEAN,
        std=FASHION_STD,
        input_size=None,
        categories=FASHION_CATEGORIES if n == len(FASHION_CATEGORIES) else (),
    )


#: The ImageNet architectures, VGG-16 (defined here) first; each builds with ``build_network``.
IMAGENET_ARCHITECTURES: dict[str, Architecture] = {
    "vgg16": Architecture(
        "vgg16",
        VGG16,
        "classifier.6",
        "classifier.6.weight",
        "torchvision.models.vgg16",
        32,
        "VGG16_Weights.IMAGENET1K_V1",
    ),
    **ARCHITECTURES,
}
_BUILTIN = (*FASHION_ARCHITECTURES, *IMAGENET_ARCHITECTURES)
#: Built-ins whose ImageNet weights ``weights="torchvision"`` fetches (torchvision's builder of
#: the same name and its weights enum member).
_TORCHVISION_WEIGHTS = {
    name: arch.torchvision_weights
    for name, arch in IMAGENET_ARCHITECTURES.items()
    if arch.torchvision_weights is not None
}


def _torchvision_state(name: str) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """torchvision's ImageNet weights for built-in ``name`` (from its download cache) and the
    category names."""
    enum_path = _TORCHVISION_WEIGHTS[name]
    try:
        import torchvision
    except ImportError as error:
        raise WeightsError(
            "weights='torchvision' needs torchvision, which is not installed; install the "
            "'torchvision' extra (pip install 'bioattn[torchvision]') or pass the path of a "
            f"{name} .pth/.safetensors state dict as weights"
        ) from error
    try:
        enum_name, member = enum_path.split(".")
        tv_weights = getattr(getattr(torchvision.models, enum_name), member)
        model = getattr(torchvision.models, name)(weights=tv_weights)
        categories = tuple(tv_weights.meta.get("categories", ()))
    except Exception as error:
        raise WeightsError(
            f"could not get torchvision's {enum_path} "
            f"({type(error).__name__}: {error}); torchvision downloads them on first use into "
            "the torch hub cache (TORCH_HOME), which needs internet access once - or pass the "
            f"path of a {name} .pth/.safetensors state dict as weights"
        ) from error
    return model.state_dict(), categories


def _torchvision_only_error(spec: str) -> WeightsError:
    """The error for ``weights='torchvision'`` on a model torchvision has no weights for."""
    where = (
        f"{spec!r} weights are published with {IMAGENET_ARCHITECTURES[spec].source}: download the "
        "file and pass its path"
        if spec in IMAGENET_ARCHITECTURES
        else f"give {spec!r} a .safetensors/.pth state dict file"
    )
    return WeightsError(
        "weights='torchvision' exists only for "
        + ", ".join(repr(name) for name in _TORCHVISION_WEIGHTS)
        + f"; {where}"
    )


def _counter_free(keys: object) -> frozenset[str]:
    return frozenset(str(k) for k in keys if not str(k).endswith(".num_batches_tracked"))  # type: ignore[attr-defined]


@functools.cache
def _builtin_key_sets() -> dict[str, frozenset[str]]:
    """State-dict keys (without BatchNorm counters) of each built-in model, built on ``meta``."""
    with torch.device("meta"):
        modules: dict[str, nn.Module] = {
            name: arch.build() for name, arch in FASHION_ARCHITECTURES.items()
        }
        modules.update({name: arch.build(1000) for name, arch in IMAGENET_ARCHITECTURES.items()})
    return {name: _counter_free(module.state_dict()) for name, module in modules.items()}


def guess_architecture(state: Mapping[str, torch.Tensor]) -> str | None:
    """The built-in model whose state-dict keys ``state`` has (BatchNorm counters aside), if any."""
    keys = _counter_free(state)
    for name, known in _builtin_key_sets().items():
        if keys == known:
            return name
    return None


def _with_batch_counters(
    module: nn.Module, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` plus a zero ``num_batches_tracked`` for each BatchNorm that has running
    statistics in ``state`` but no counter (files saved before PyTorch 0.4.1 have none; eval-mode
    forward passes never read it)."""
    state = dict(state)
    suffix = "num_batches_tracked"
    for key in module.state_dict():
        missing = key.endswith("." + suffix) and key not in state
        if missing and key[: -len(suffix)] + "running_mean" in state:
            state[key] = torch.zeros((), dtype=torch.long)
    return state


def _load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    spec: str,
    source: str,
    *,
    assign: bool = False,
) -> None:
    """Load ``state`` into built-in model ``spec``; a mismatch error lists the differences and
    names the built-in model the file belongs to, when it is one."""
    state = _with_batch_counters(module, state)
    problems = check_state_dict(module, state)
    if problems:
        guess = guess_architecture(state)
        if guess is not None and guess != spec:
            advice = (
                f"The file holds a {guess!r} state dict: build model {guess!r} with it "
                f"(--model {guess}), or give {spec!r} weights saved from a {spec!r}"
            )
        else:
            advice = (
                f"Use weights saved from a {spec!r} (and the same number of classes, or pass "
                "num_classes)"
            )
            if spec in IMAGENET_ARCHITECTURES:
                advice += f"; {spec!r} follows {IMAGENET_ARCHITECTURES[spec].source}"
        raise WeightsError(
            f"weights from {source} do not match the model {spec!r} ({type(module).__name__}): "
            + "; ".join(problems)
            + f" (after unwrapping 'state_dict' and removing any 'module.' prefix). {advice}"
        )
    load_weights(module, state, assign=assign)


def _build_imagenet(
    arch: Architecture,
    weights: str | Path | None,
    num_classes: int | None,
    readout: str | None,
) -> Network:
    """A built-in ImageNet model (one of :data:`IMAGENET_ARCHITECTURES`) as a Network."""
    spec, head = arch.name, arch.head
    state = None
    categories: tuple[str, ...] = ()
    source = ""
    if weights is not None:
        if str(weights) == "torchvision":
            if spec not in _TORCHVISION_WEIGHTS:
                raise _torchvision_only_error(spec)
            state, categories = _torchvision_state(spec)
            source = "torchvision"
        else:
            state = load_state_dict_file(weights)
            source = repr(str(weights))
        if num_classes is None:
            num_classes = _classes_in(state, head)
    if state is None:
        module = arch.build(num_classes or 1000)
    else:
        # Build without allocating or initialising (millions of parameters), then take the
        # file's tensors.
        with torch.device("meta"):
            module = arch.build(num_classes or 1000)
        _load_checked(module, state, spec, source, assign=True)
    classes = int(module.get_submodule(head.rsplit(".", 1)[0]).out_features)
    return Network(
        module=module,
        name=spec,
        readout=readout or arch.readout,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=224,
        categories=categories if len(categories) == classes else (),
    )


#: Example of a valid user-model spec, quoted by the refusals below.
_FACTORY_HELP = (
    "name a model factory in your own module: a function that takes no arguments and returns an "
    "nn.Module or a Network, or an nn.Module subclass whose constructor needs no arguments "
    "(e.g. 'mypackage.models:make_net')"
)
#: Non-model packages that no model spec should name (besides the standard library).
_NON_MODEL_PACKAGES = frozenset(
    {"pip", "setuptools", "pkg_resources", "_distutils_hack", "pytest", "_pytest", "IPython"}
)


def _non_model_module(module_name: str) -> str | None:
    """Why ``module_name`` cannot hold a model factory, or None when it may."""
    top = module_name.split(".", 1)[0]
    if top in sys.stdlib_module_names:
        return f"{module_name!r} is part of the Python standard library, not a model module"
    if top in _NON_MODEL_PACKAGES:
        return f"{module_name!r} belongs to the tool {top!r}, not to a model module"
    if top == "bioattn" and not (module_name + ".").startswith("bioattn.models."):
        return f"{module_name!r} is part of bioattn itself, outside bioattn.models"
    return None


def _underlying(target: object) -> object:
    """The function behind ``functools.partial`` objects and ``functools.wraps`` decorators."""
    for _ in range(100):
        if isinstance(target, functools.partial):
            target = target.func
        elif hasattr(target, "__wrapped__"):
            target = target.__wrapped__  # type: ignore[attr-defined]
        else:
            break
    return target


def _written_in_python(target: object) -> bool:
    """Whether ``target`` is a Python function or method, or an object whose class defines
    ``__call__`` in Python (builtins and C functions are not)."""
    if inspect.isbuiltin(target):
        return False
    if inspect.isfunction(target) or inspect.ismethod(target):
        return inspect.isfunction(getattr(target, "__func__", target))
    return inspect.isfunction(inspect.getattr_static(type(target), "__call__", None))


def _refuse_non_factory(spec: str, target: object) -> None:
    """Refuse, before calling it, a target that is clearly not a model factory."""
    inner = _underlying(target)
    name = getattr(inner, "__qualname__", None) or type(inner).__name__
    if inspect.isclass(inner):
        if not issubclass(inner, (nn.Module, Network)):
            raise ConfigError(
                f"model {spec!r} names the class {name}, which is not an nn.Module subclass; "
                + _FACTORY_HELP
            )
    elif isinstance(inner, nn.Module):
        raise ConfigError(
            f"model {spec!r} names an nn.Module instance ({type(inner).__name__}), which would "
            "be called as a forward pass; name its class or a function that builds it. "
            + _FACTORY_HELP
        )
    elif not _written_in_python(inner):
        raise ConfigError(
            f"model {spec!r} names {name}, a built-in or C function, not a model factory; "
            + _FACTORY_HELP
        )
    defined_in = getattr(inner, "__module__", None)
    reason = _non_model_module(defined_in) if isinstance(defined_in, str) else None
    if reason is not None:
        raise ConfigError(
            f"model {spec!r} names {name} from {defined_in!r}: {reason}; " + _FACTORY_HELP
        )
    try:
        signature = inspect.signature(target)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # no signature to inspect (some extension types): calling it is the test
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise ConfigError(
            f"model {spec!r} names {name}{signature}, which has required parameters "
            f"({', '.join(required)}), but bioattn calls it with no arguments; give them "
            "defaults or wrap it in a function that takes none. " + _FACTORY_HELP
        )


def _import_callable(spec: str) -> tuple[object, object]:
    """Import ``package.module:callable`` and check that it is a model factory; returns (python
    module, callable). Nothing is called here; only the module is imported."""
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise ConfigError(f"unknown model {spec!r}; {_spec_help()}")
    reason = _non_model_module(module_name)
    if reason is not None:  # checked before importing: importing some modules has effects
        raise ConfigError(f"model {spec!r} is refused: {reason}; " + _FACTORY_HELP)
    parts = attr.split(".")
    if any(part.startswith("__") for part in parts):
        raise ConfigError(
            f"model {spec!r} names a dunder attribute ({attr!r}), not a model factory; "
            + _FACTORY_HELP
        )
    try:
        py_module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(
            f"cannot import {module_name!r} for model {spec!r}: {type(error).__name__}: {error}; "
            "make sure the module is importable (installed or on PYTHONPATH)"
        ) from error
    target: object = py_module
    for part in parts:
        if not hasattr(target, part):
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r} (model {spec!r}); name a "
                "function or class in it that builds the model"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{spec!r} is not callable; name a function that returns an nn.Module")
    _refuse_non_factory(spec, target)
    return py_module, target


def _last_linear(module: nn.Module) -> str | None:
    name = None
    for path, child in module.named_modules():
        if isinstance(child, nn.Linear):
            name = path
    return name


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


def _build_user(spec: str, weights: str | Path | None, readout: str | None = None) -> Network:
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
        if readout is not None and readout != network.readout:
            network = replace(network, readout=readout)
    elif isinstance(built, nn.Module):
        readout = readout or getattr(py_module, "bioattn_readout", None) or _last_linear(built)
        if readout is None:
            raise ConfigError(
                f"model {spec!r} has no nn.Linear to read features from; set "
                "bioattn_readout = '<dotted module path>' in its module, naming the module whose "
                "input is the feature vector for detectors"
            )
        in_channels = first_conv_channels(built) or 3
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
            raise _torchvision_only_error(spec)
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
    readout: str | None = None,
) -> Network:
    """Build a model and wrap it as a :class:`Network` in eval mode.

    Args:
        spec: ``"fashion-vgg"`` (the small default network), ``"fashion-vgg16"`` (its deeper
            sibling with VGG-16's 13 convs), an ImageNet architecture
            (``"vgg16"``, ``"alexnet"``, ``"resnet18"``, ``"resnet50"``, ``"cornet-z"``,
            ``"cornet-s"``; see the module docstring) or ``"package.module:callable"``.
        weights: a ``.safetensors``/``.pth``/``.pt`` state dict file (loaded safely and checked
            against the model), ``"torchvision"`` for torchvision's ImageNet weights of vgg16,
            alexnet and the ResNets (needs torchvision and its download cache), or None to keep
            the seeded random initialisation.
        num_classes: size of the classifier head of a built-in model; by default read from the
            weights file, else 10 (fashion-vgg, fashion-vgg16) or 1000 (the ImageNet models).
        widths: channel widths per block of fashion-vgg (three) or fashion-vgg16 (five); by
            default read from the weights file, else DEFAULT_FASHION_WIDTHS (16, 32, 64) or
            FASHION_VGG16_WIDTHS (16, 32, 64, 64, 64).
        seed: seed for the random initialisation (the global RNG state is left untouched).
        readout: the module whose input detectors read, instead of the model's default (the
            last linear layer's input; fc7 for vgg16 and alexnet).

    Raises:
        ConfigError: unknown spec, options that do not apply to it, or a user model that cannot
            be imported or built.
        WeightsError: weights that cannot be loaded safely or do not match the model.
    """
    spec = str(spec).strip()
    builtin = spec.lower()
    if builtin not in _BUILTIN and ":" not in spec:
        raise ConfigError(f"unknown model {spec!r}; {_spec_help()}")
    if widths is not None and builtin not in FASHION_ARCHITECTURES:
        raise ConfigError(
            "widths applies only to "
            + " and ".join(repr(name) for name in FASHION_ARCHITECTURES)
            + f", not to model {spec!r}"
        )
    if num_classes is not None and builtin not in _BUILTIN:
        raise ConfigError(
            f"num_classes applies only to built-in models, not to {spec!r}; build the head you "
            "need in the callable"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if builtin in FASHION_ARCHITECTURES:
            arch = FASHION_ARCHITECTURES[builtin]
            network = _build_fashion(arch, weights, num_classes, widths)
            return network if readout is None else replace(network, readout=readout)
        if builtin in IMAGENET_ARCHITECTURES:
            return _build_imagenet(IMAGENET_ARCHITECTURES[builtin], weights, num_classes, readout)
        return _build_user(spec, weights, readout)
