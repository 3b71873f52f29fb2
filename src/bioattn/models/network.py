"""A CNN wrapped with what attention experiments need: attention sites, input normalisation and
the readout features that binary detectors see.

The attendable layers are the network's *attention sites* (:mod:`bioattn.models.sites`): each call
of an activation (ReLU, ReLU6, LeakyReLU, GELU, SiLU, ELU; module or function) whose output is a
stack of feature maps, found on the graph ``torch.fx`` traces. Attention acts on that output (after
the nonlinearity, before any pooling). A site is named by its site name (``features.1``,
``layer1.0.relu:1``), its alias (``conv1_1`` in VGG-shaped networks), the conv that feeds it
(``features.0``), or its 1-based number in network order; ``<module>:*`` names all calls of a
reused module at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from bioattn.errors import ConfigError, LayerError
from bioattn.models.sites import GROUP_SUFFIX, LayerInfo, Sites, find_sites, first_conv_channels

__all__ = ["PRECISIONS", "LayerInfo", "Network", "resolve_device"]

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
    precision: str = "float32"  # forward passes of sweeps: "float32", "bfloat16" or "float16"
    layers: list[LayerInfo] = field(init=False, default_factory=list)
    sites: Sites = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.module.eval()
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
        self._find_sites()

    def _find_sites(self) -> None:
        self.sites = find_sites(self.module, self.readout, self.mean, self.input_size, self.name)
        self.layers = list(self.sites.layers)
        if not self.layers:
            raise LayerError(
                f"model {self.name!r} has no attendable layers: bioattn attends the output of an "
                "activation (ReLU, ReLU6, LeakyReLU, GELU, SiLU or ELU, as a module or a function) "
                "whose output is a stack of feature maps (N, C, H, W)"
            )

    # --- layers ---------------------------------------------------------------------------
    def resolve_layer(self, spec: str | int | LayerInfo) -> LayerInfo:
        """Resolve a site name, alias, feeding conv, module path or 1-based number to a layer;
        ``<module>:*`` gives the group of all calls of a reused module."""
        if isinstance(spec, LayerInfo):
            if spec in self.layers or spec == self.sites.groups.get(spec.name):
                return spec
            spec = spec.alias  # a layer of another network with these sites (an SSN-CNN's)
        text = str(spec).strip()
        if text.isdigit() and not isinstance(spec, bool):
            number = int(text)
            if 1 <= number <= len(self.layers):
                return self.layers[number - 1]
        for layer in self.layers:
            if text in (layer.name, layer.alias):
                return layer
        if text in self.sites.groups:
            return self.sites.groups[text]
        by_module = [la for la in self.layers if text in (la.activation, la.conv)]
        if len(by_module) == 1:
            return by_module[0]
        if text in self.sites.refused:
            raise LayerError(
                f"layer {text!r} of model {self.name!r} cannot be attended: "
                + self.sites.refused[text]
            )
        if by_module:
            raise LayerError(
                f"layer {spec!r} of model {self.name!r} is called {len(by_module)} times per "
                "forward pass; name one call ("
                + ", ".join(la.name for la in by_module)
                + (
                    f") or all of them ({text}{GROUP_SUFFIX})"
                    if text + GROUP_SUFFIX in self.sites.groups
                    else ")"
                )
            )
        shown = [
            f"{layer.alias} ({layer.name})" if layer.alias != layer.name else layer.name
            for layer in self.layers
        ]
        raise LayerError(
            f"unknown layer {spec!r} for model {self.name!r}; valid layers are "
            f"1..{len(self.layers)} or: "
            + ", ".join(shown)
            + (f"; groups: {', '.join(self.sites.groups)}" if self.sites.groups else "")
            + " (`bioattn layers` lists them)"
        )

    def resolve_layers(self, specs: Sequence[str | int] | str | None) -> list[LayerInfo]:
        """Resolve several layers; ``None`` or ``"all"`` means every attendable layer."""
        if specs is None or specs == "all" or list(specs) == ["all"]:
            return list(self.layers)
        if isinstance(specs, str):
            specs = [s for s in specs.split(",") if s.strip()]
        return [self.resolve_layer(s) for s in specs]

    def site_table(self) -> list[dict[str, object]]:
        """One row per site (then per group): number, name, alias, module path, call index,
        activation kind, feeding conv, maps and spatial size at the probe input."""
        rows = []
        for layer in [*self.layers, *self.sites.groups.values()]:
            size = "x".join(map(str, layer.size)) if layer.size else ""
            rows.append(
                {
                    "#": layer.number or "",
                    "name": layer.name,
                    "alias": layer.alias if layer.alias != layer.name else "",
                    "module": layer.activation or "(function)",
                    "call": "all" if layer.is_group else layer.call,
                    "kind": layer.kind,
                    "conv": layer.conv,
                    "maps": layer.channels,
                    "size": size if not layer.is_group else f"{len(layer.members)} calls",
                }
            )
        return rows

    def submodule(self, path: str) -> nn.Module:
        """The module at dotted ``path``."""
        return self.module.get_submodule(path)

    def hook_site(
        self, spec: str | int | LayerInfo, transform: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> Callable[[], None]:
        """Apply ``transform`` to a site's output in every forward pass (at every call of a
        group) until the returned function is called. ``transform`` returns the replacement
        activity, or None to leave it as it is; transforms run in registration order."""
        layer = self.resolve_layer(spec)
        if not layer.nodes:  # module-hook fallback: the module must be called once per pass
            calls = [0]

            def start(_module: nn.Module, _inputs: object) -> None:
                calls[0] = 0

            def once(_module: nn.Module, _inputs: object, output: torch.Tensor) -> object:
                calls[0] += 1
                if calls[0] > 1:
                    raise LayerError(
                        f"module {layer.activation!r} of model {self.name!r} was called more "
                        "than once in one forward pass, and torch.fx cannot trace the model, so "
                        "a hook cannot tell the calls apart; attend another layer, or make "
                        "forward traceable (no data-dependent control flow)"
                    )
                return transform(output)

            handles = [
                self.module.register_forward_pre_hook(start),
                self.submodule(layer.activation).register_forward_hook(once),
            ]
            return lambda: [handle.remove() for handle in handles] and None
        removers = [self.sites.hooks[node].add(transform) for node in layer.nodes]

        def remove() -> None:
            for remover in removers:
                remover()

        return remove

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for a batch of *preprocessed* images, with the transforms
        registered on sites (:meth:`hook_site`) applied."""
        return self.sites.hooked(x)

    @property
    def input_channels(self) -> int:
        """Channels of the images the model takes: its first convolution's, else len(mean)."""
        return first_conv_channels(self.module) or len(self.mean)

    # --- device and precision -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (images are moved there by :meth:`preprocess`)."""
        for tensor in self.module.parameters():
            return tensor.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Network:
        """Move the model to ``device`` ("cpu", "cuda", "cuda:1", or "auto": CUDA if present)."""
        if any(hooks.transforms for hooks in self.sites.hooks.values()):
            raise ConfigError(
                f"cannot move model {self.name!r} while attention or a recording is active on "
                "it; move it first (Network.to) and then modulate"
            )
        self.module.to(resolve_device(device))
        if self.sites.graph is not None and any(
            node.op == "get_attr" for node in self.sites.graph.graph.nodes
        ):
            self._find_sites()  # the traced graph holds tensors .to() replaced in the module
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
            # float32 on the CPU, where detectors live (differentiable: gradients flow back);
            # a copy, as an in-place op after the readout (a ReLU) would change the input
            features = torch.flatten(inputs[0], 1).float().cpu()
            shared = features.data_ptr() == inputs[0].data_ptr()
            store.append(features.clone() if shared else features)

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
                self(self.preprocess(images[start : start + batch_size]))
                outputs.append(store.pop())
        return torch.cat(outputs) if outputs else torch.empty(0)
