"""Reading the post-activation activity of attention sites.

The one place where transforms that *read* activity are registered on sites
(:meth:`~bioattn.models.network.Network.hook_site`); :func:`bioattn.attention.gains.modulate`
registers the ones that change it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch

from bioattn.errors import LayerError
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
            if layer.is_group:
                raise LayerError(
                    f"cannot read the activity of {layer.name}: it is a group of "
                    f"{len(layer.members)} sites; read one of them ({', '.join(layer.members)})"
                )

            def keep(output: torch.Tensor, alias: str = layer.alias) -> None:
                store[alias] = output

            stack.callback(network.hook_site(layer, keep))
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
            network(network.preprocess(images[start : start + batch_size]))
            for alias, chunk in chunks.items():
                chunk.append(store[alias].mean(dim=(2, 3)).float().cpu())
    return {alias: torch.cat(chunk) for alias, chunk in chunks.items()}


def concat_units(
    per_layer: Mapping[str, torch.Tensor], layers: Sequence[LayerInfo]
) -> torch.Tensor:
    """Concatenate per-layer (…, C_l) tensors along the last axis in network order."""
    return torch.cat([per_layer[layer.alias] for layer in layers], dim=-1)
