"""Forward hooks that read the post-activation activity of attendable layers.

The one place where hooks that *read* activity are registered;
:func:`bioattn.attention.gains.modulate` registers the ones that change it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch

from bioattn.models.network import LayerInfo, Network


@contextmanager
def capture_activity(
    network: Network, layers: Sequence[LayerInfo]
) -> Iterator[dict[str, torch.Tensor]]:
    """Context in which each forward pass stores every layer's post-ReLU output by layer alias.

    The stored tensors are the ones the network goes on to use (they stay in the autograd graph,
    which gradient values need); hooks that modify activity must be registered before these so
    that what is captured is the modulated activity. Each pass overwrites the previous entries.
    """
    store: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for layer in layers:

            def hook(_module, _inputs, output, alias=layer.alias):
                store[alias] = output
                return None

            handle = network.submodule(layer.activation).register_forward_hook(hook)
            stack.callback(handle.remove)
        yield store


def record_map_means(
    network: Network,
    images: torch.Tensor,
    layers: Sequence[LayerInfo] | None = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Spatially averaged post-ReLU activity (N, C_l) of each layer, one forward pass per batch.

    Activity is averaged over positions inside the hook, so memory stays (N, sum C_l) whatever
    the image size. Modulations active on the network (``bioattn.attention.gains.modulate``)
    are included when they were entered before this call.
    """
    layers = list(network.layers if layers is None else layers)
    chunks: dict[str, list[torch.Tensor]] = {layer.alias: [] for layer in layers}
    with torch.no_grad(), capture_activity(network, layers) as store:
        for start in range(0, images.shape[0], batch_size):
            network.module(network.preprocess(images[start : start + batch_size]))
            for alias, chunk in chunks.items():
                chunk.append(store[alias].mean(dim=(2, 3)).float().cpu())
    return {alias: torch.cat(chunk) for alias, chunk in chunks.items()}


def concat_units(
    per_layer: Mapping[str, torch.Tensor], layers: Sequence[LayerInfo]
) -> torch.Tensor:
    """Concatenate per-layer (…, C_l) tensors along the last axis in network order."""
    return torch.cat([per_layer[layer.alias] for layer in layers], dim=-1)
