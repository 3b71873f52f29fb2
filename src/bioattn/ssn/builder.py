"""The SSN-CNN: a CNN whose chosen conv layers pass their output through an SSN instead of a ReLU.

:func:`build_ssn_network` copies a :class:`~bioattn.models.network.Network` and replaces the ReLU
after each chosen conv with an :class:`SSNBlock`: an :class:`~bioattn.ssn.layer.SSNLayer`
followed by a plain ``nn.ReLU`` (the identity on E rates, which are non-negative). The block
declares itself an activation, so the SSN-CNN has the original's attention sites, with the same
names, aliases, module paths, conv paths and channel counts, so values files,
:func:`~bioattn.attention.gains.modulate`, recordings, tuning and gradient values and
:func:`~bioattn.experiments.sweep.run_sweep` work on the SSN-CNN unchanged. Attention as an input
current to E and/or I cells is :func:`ssn_attention`.

Choices (documented in ``docs/ssn.md``):

* **Similarity between maps** (:func:`tuning_similarity`): the cosine similarity of two maps'
  rectified tuning vectors (tuning values of the original network, negative z-scores set to 0):
  maps that prefer the same categories connect. It is non-negative and positive semi-definite,
  which keeps the SSN stable (see :func:`tuning_similarity`). Rows are normalised to sum 1
  inside the layer. Without values: the identity (each map connects only to itself).
* **Calibration** (:func:`calibrate_ssn`), layer by layer in network order over a reference set
  of unattended images: the conv output is multiplied by ``drive_scale = params.drive /
  mean(x | x > 0)`` (a typical active unit gets the drive ``params.drive``), then each map's E
  rates are multiplied by ``output_scale_k = mean post-ReLU activity of map k in the original
  network / mean E rate of map k in the SSN-CNN``, so that unattended mean activity matches the
  original network map by map. Maps whose mean SSN rate is below 1e-6 of the layer's mean (silent
  maps) get the layer-wide ratio.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress

import numpy as np
import torch
import xarray as xr
from torch import nn

from bioattn.data.imageset import ImageSet
from bioattn.errors import ConfigError, LayerError
from bioattn.logs import progress_bar
from bioattn.models.detectors import Detectors, fit_detectors
from bioattn.models.hooks import record_map_means
from bioattn.models.network import LayerInfo, Network
from bioattn.ssn.layer import SSNLayer, SSNParams, layer_currents

#: SSN layers of the default network when none are named: all six (measured affordable; see
#: docs/ssn.md for the cost per image).
DEFAULT_SSN_LAYERS = "all"


class SSNBlock(nn.Module):
    """An SSN layer and the identity ReLU after it, in place of a ReLU module.

    It declares itself an activation (``bioattn_activation_kind``), so the attention site it
    replaces keeps its name, alias and module path, and its output is what attention scales and
    recordings read.
    """

    bioattn_activation_kind = "SSN"

    def __init__(self, ssn: SSNLayer) -> None:
        super().__init__()
        self.ssn = ssn
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """E rates of the SSN's steady state (rescaled) for conv output ``x``."""
        return self.act(self.ssn(x))


class _StopForwardError(Exception):
    """Raised inside a hook to end a forward pass early."""


def tuning_similarity(values: xr.Dataset, layer: LayerInfo) -> torch.Tensor:
    """(C, C) similarity of one layer's maps: cosine similarity of their rectified tuning vectors.

    A map's tuning vector is its tuning values across categories (``values["tuning"]``, z-scores);
    its rectified vector keeps the categories it prefers ([f]₊). Two maps are similar when they
    prefer the same categories; maps with no preferred category are similar only to themselves
    (diagonal 1). Being a Gram matrix of non-negative vectors, the result is non-negative and
    positive semi-definite, so the row-normalised similarity the SSN uses has real eigenvalues in
    [0, 1] and cannot flip the sign of any lateral pathway (a clipped correlation matrix can have
    negative eigenvalues, which turn I→I inhibition into excitation in some patterns of maps and
    can make the SSN diverge at strong drive).
    """
    if "tuning" not in values:
        raise ConfigError(
            "tuning similarity needs a values dataset with 'tuning'; available: "
            + ", ".join(map(str, values.data_vars))
        )
    mask = values["layer"].values == layer.alias
    f = np.asarray(values["tuning"].values[:, mask], dtype=np.float64)  # (K, C)
    if f.shape[1] != layer.channels:
        raise ConfigError(
            f"values hold {f.shape[1]} maps for layer {layer.alias} but the network has "
            f"{layer.channels}; use values computed for this network"
        )
    positive = np.clip(np.nan_to_num(f), 0.0, None)
    norm = np.sqrt((positive**2).sum(axis=0))
    live = norm > 1e-9
    unit = np.where(live, positive / np.where(live, norm, 1.0), 0.0)
    gram = unit.T @ unit
    np.fill_diagonal(gram, 1.0)
    return torch.from_numpy(gram)


def _resolve_similarity(
    similarity: xr.Dataset | Mapping[str, torch.Tensor] | str | None, layer: LayerInfo
) -> torch.Tensor | None:
    if similarity is None or (isinstance(similarity, str) and similarity == "identity"):
        return None
    if isinstance(similarity, str):
        raise ConfigError(
            f"unknown similarity {similarity!r}; give 'identity', a values dataset (tuning "
            "correlations) or a mapping from layer alias to a (C, C) matrix"
        )
    if isinstance(similarity, xr.Dataset):
        return tuning_similarity(similarity, layer)
    for key in (layer.alias, layer.name):
        if key in similarity:
            return torch.as_tensor(similarity[key])
    return None


def ssn_blocks(network: Network) -> dict[str, SSNBlock]:
    """The SSN blocks of an SSN-CNN by layer alias (empty for a plain network)."""
    blocks = {}
    for layer in network.layers:
        module = network.submodule(layer.activation) if layer.activation else None
        if isinstance(module, SSNBlock):
            blocks[layer.alias] = module
    return blocks


def ssn_layer(network: Network, spec: str | int | LayerInfo) -> SSNLayer:
    """The SSN layer at one attendable layer; an error lists the SSN layers if there is none."""
    layer = network.resolve_layer(spec)
    blocks = ssn_blocks(network)
    if layer.alias not in blocks:
        raise LayerError(
            f"layer {layer.alias} of {network.name!r} has no SSN; SSN layers are: "
            + (", ".join(blocks) or "none (build the network with build_ssn_network)")
        )
    return blocks[layer.alias].ssn


def build_ssn_network(
    network: Network,
    layers: Sequence[str | int] | str | None = DEFAULT_SSN_LAYERS,
    params: SSNParams | None = None,
    similarity: xr.Dataset | Mapping[str, torch.Tensor] | str | None = None,
    reference_images: torch.Tensor | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> Network:
    """A copy of ``network`` with the ReLU of each of ``layers`` replaced by an SSN.

    Args:
        network: any supported network (the default FashionVGG, VGG-16, user models).
        layers: layers to turn into SSNs (names, aliases, numbers, or ``"all"``/``None``).
        params: SSN parameters (one set for every layer).
        similarity: map similarity: ``None``/``"identity"``, a values dataset (tuning
            correlations, :func:`tuning_similarity`) or ``{alias: (C, C) tensor}``.
        reference_images: [0, 1] images for :func:`calibrate_ssn`; ``None`` leaves every drive
            scale and output scale at 1 (uncalibrated: only sensible when the conv outputs are
            already in the SSN's input range).
        batch_size: batch size for calibration passes.

    The original network is not modified. Returns a :class:`Network` named
    ``"<name>+ssn"`` with the same attendable layers.
    """
    params = params if params is not None else SSNParams()
    chosen = network.resolve_layers(layers)
    if not chosen:
        raise ConfigError("no layers given to turn into SSNs")
    module = copy.deepcopy(network.module)
    for layer in chosen:
        calls = [la.name for la in network.layers if la.activation == layer.activation]
        if not layer.activation or layer.is_group or len(calls) > 1:
            what = (
                "a functional activation (no module to replace)"
                if not layer.activation
                else f"a call of module {layer.activation!r}, which runs at {len(calls)} sites "
                f"({', '.join(calls)}); an SSN in its place would run at every one"
            )
            raise LayerError(
                f"layer {layer.name} of {network.name!r} cannot become an SSN: it is {what}; "
                "choose layers whose ReLU is a module called once"
            )
        parent_path, _, child = layer.activation.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        relu = getattr(parent, child)
        if not isinstance(relu, nn.ReLU):
            raise LayerError(
                f"layer {layer.alias}: expected an nn.ReLU at {layer.activation}, found "
                f"{type(relu).__name__}; it may already be an SSN"
            )
        ssn = SSNLayer(layer.channels, params, _resolve_similarity(similarity, layer), layer.alias)
        setattr(parent, child, SSNBlock(ssn))
    module.eval()
    ssn_network = Network(
        module=module,
        name=f"{network.name}+ssn",
        readout=network.readout,
        mean=network.mean,
        std=network.std,
        input_size=network.input_size,
        categories=network.categories,
    )
    before = [(la.alias, la.conv or la.name, la.channels) for la in network.layers]
    after = [(la.alias, la.conv or la.name, la.channels) for la in ssn_network.layers]
    if before != after:
        raise LayerError(
            f"replacing ReLUs by SSNs changed the attendable layers of {network.name!r} "
            f"({before} -> {after}); this model's layout is not supported by the SSN builder"
        )
    if reference_images is not None:
        calibrate_ssn(ssn_network, network, reference_images, batch_size, progress)
    return ssn_network


def _run_until(
    network: Network,
    module: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    collect: Callable[[torch.Tensor], None],
    at_input: bool = False,
) -> None:
    """Run ``images`` through ``network`` batch by batch without gradients, handing ``module``'s
    output (its input with ``at_input``) of each batch to ``collect`` and ending every pass
    there, so the layers after ``module`` cost nothing."""

    def stop(_module: nn.Module, inputs: tuple[torch.Tensor, ...], *output: torch.Tensor) -> None:
        collect(inputs[0] if at_input else output[0])
        raise _StopForwardError

    if at_input:
        handle = module.register_forward_pre_hook(stop)
    else:
        handle = module.register_forward_hook(stop)
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                with suppress(_StopForwardError):
                    network(network.preprocess(images[start : start + batch_size]))
    finally:
        handle.remove()


def conv_output(
    network: Network, spec: str | int | LayerInfo, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """The conv output (N, C, H, W) that feeds a layer's activation (its SSN in an SSN-CNN).

    Unattended, without gradients; the forward pass stops at the conv.
    """
    layer = network.resolve_layer(spec)
    chunks: list[torch.Tensor] = []
    _run_until(
        network, network.submodule(layer.conv), images, batch_size, lambda x: chunks.append(x)
    )
    return torch.cat(chunks)


def _conv_output_stats(
    network: Network, block: SSNBlock, images: torch.Tensor, batch_size: int
) -> float:
    """Mean of the positive entries of the conv output that feeds ``block``, over ``images``."""
    total, count = 0.0, 0

    def collect(x: torch.Tensor) -> None:
        nonlocal total, count
        positive = x[x > 0]
        total += float(positive.sum())
        count += int(positive.numel())

    _run_until(network, block.ssn, images, batch_size, collect, at_input=True)
    if count == 0:
        raise ConfigError(
            f"calibration: the conv output feeding SSN layer {block.ssn.name} is never positive "
            "on the reference images; use other reference images"
        )
    return total / count


def _ssn_map_means(
    network: Network, block: SSNBlock, images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Mean (over images and positions) of each map's SSN output, stopping after ``block``."""
    sums = torch.zeros(block.ssn.channels, dtype=torch.float64)

    def collect(output: torch.Tensor) -> None:
        sums.add_(output.mean(dim=(2, 3)).sum(0).to(torch.float64))

    _run_until(network, block.ssn, images, batch_size, collect)
    return sums / images.shape[0]


def calibrate_ssn(
    ssn_network: Network,
    original: Network,
    images: torch.Tensor,
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, dict[str, object]]:
    """Set each SSN layer's drive scale and output scale from unattended reference ``images``.

    Layers are calibrated in network order, each with the earlier SSN layers already
    calibrated. See the module docstring for the rule. Returns, per layer alias, the drive
    scale and the output scales (as lists) that were set.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConfigError(
            f"reference images must be a non-empty (N, C, H, W) batch, got {tuple(images.shape)}"
        )
    blocks = ssn_blocks(ssn_network)
    if not blocks:
        raise LayerError(f"{ssn_network.name!r} has no SSN layers to calibrate")
    layers = [original.resolve_layer(alias) for alias in blocks]
    target = record_map_means(original, images, layers, batch_size)  # alias -> (N, C)
    report: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        for block in blocks.values():  # unattended: no currents during calibration
            stack.enter_context(layer_currents(block.ssn, None, None))
        for alias, block in progress_bar(
            blocks.items(), desc="calibrating SSN", disable=not progress
        ):
            ssn = block.ssn
            ssn.set_scales(drive_scale=1.0, output_scale=1.0)
            mean_positive = _conv_output_stats(ssn_network, block, images, batch_size)
            ssn.set_scales(drive_scale=ssn.params.drive / mean_positive)
            rates = _ssn_map_means(ssn_network, block, images, batch_size)
            wanted = target[alias].mean(0).to(torch.float64)
            layer_ratio = float(wanted.mean() / rates.mean().clamp(min=1e-12))
            live = rates > 1e-6 * float(rates.mean())
            scale = torch.where(live, wanted / rates.clamp(min=1e-12), layer_ratio)
            ssn.set_scales(output_scale=scale)
            report[alias] = {
                "drive_scale": float(ssn.drive_scale),
                "mean_positive_conv_output": mean_positive,
                "output_scale": [round(float(v), 6) for v in scale],
                "mean_ssn_rate_hz": float(rates.mean()),
            }
    return report


def fit_ssn_detectors(
    ssn_network: Network, images: ImageSet, l2: float = 1e-3, batch_size: int = 128
) -> Detectors:
    """Detectors re-fitted on the SSN-CNN's readout features of ``images`` (training images)."""
    features = ssn_network.readout_features(images.images, batch_size=batch_size)
    return fit_detectors(features, images.labels, images.categories, l2=l2)


@contextmanager
def ssn_attention(
    network: Network,
    currents: Mapping[
        str | int | LayerInfo, tuple[torch.Tensor | float | None, torch.Tensor | float | None]
    ],
) -> Iterator[None]:
    """Context in which SSN layers receive attention currents ``{layer: (to E, to I)}``.

    A current is a (C,) vector (one value per feature map, the same at every position), an
    (H, W) map (the same for every feature map) or any tensor broadcastable to (N, C, H, W); it
    is added to the cells' input I_a in the units of the drive. ``None`` means no current to
    that cell type. Currents in place before are restored on exit, even after an error.
    """
    with ExitStack() as stack:
        for spec, pair in currents.items():
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ConfigError(
                    f"attention currents for layer {spec!r} must be a pair (to E, to I), "
                    f"got {type(pair).__name__}"
                )
            stack.enter_context(layer_currents(ssn_layer(network, spec), pair[0], pair[1]))
        yield
